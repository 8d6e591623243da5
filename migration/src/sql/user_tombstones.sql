CREATE TABLE user_tombstones (
    user_id    TEXT PRIMARY KEY,
    deleted_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX idx_user_tombstones_deleted_at ON user_tombstones (deleted_at);
