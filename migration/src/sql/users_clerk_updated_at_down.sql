ALTER TABLE users DROP COLUMN clerk_updated_at;
