CREATE TABLE users (
    id                TEXT PRIMARY KEY,
    email             TEXT UNIQUE NOT NULL,
    username          TEXT UNIQUE NOT NULL,
    first_name        TEXT,
    last_name         TEXT,
    avatar_url        TEXT,
    subscription_tier TEXT NOT NULL DEFAULT 'free',
    storage_used      BIGINT NOT NULL DEFAULT 0,
    storage_limit     BIGINT NOT NULL DEFAULT 2147483648,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT valid_email CHECK (email ~* '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$'),
    CONSTRAINT valid_username CHECK (username ~* '^[a-zA-Z0-9_]{3,30}$'),
    CONSTRAINT valid_storage_used CHECK (storage_used >= 0),
    CONSTRAINT valid_storage_limit CHECK (storage_limit > 0)
);

CREATE TABLE workspaces (
    id         TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name       TEXT NOT NULL DEFAULT 'My Workspace',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT unique_user_workspace UNIQUE (user_id),
    CONSTRAINT valid_workspace_name CHECK (length(trim(name)) >= 1 AND length(name) <= 100)
);

CREATE INDEX idx_users_email ON users (email);
CREATE INDEX idx_users_username ON users (username);
CREATE INDEX idx_users_created_at ON users (created_at);
CREATE INDEX idx_workspaces_user_id ON workspaces (user_id);
CREATE INDEX idx_workspaces_created_at ON workspaces (created_at);
