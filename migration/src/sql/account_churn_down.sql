ALTER TABLE users
    DROP COLUMN username_fallback,
    DROP COLUMN clerk_event_at,
    DROP COLUMN clerk_data_digest;
