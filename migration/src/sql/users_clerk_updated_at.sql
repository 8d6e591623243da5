ALTER TABLE users
    ADD COLUMN clerk_updated_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch';
