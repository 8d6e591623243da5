-- Dead letters kept where they can be queried: the worker moves each one from the dead-letter
-- queue into `dead_letters` (acknowledging it only once its row is committed), so operators
-- list, filter and replay them without ever taking letters from the queue again. The queue
-- stays the durable landing; this table is the store.

CREATE TABLE dead_letters (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The Svix message id (the AMQP message id): one row per event. A letter that arrives again
    -- (a replay that failed again) reopens its row.
    svix_id          TEXT NOT NULL,
    -- The routing key, which is Clerk's event type.
    event_type       TEXT NOT NULL,
    user_id          TEXT,
    -- The body byte for byte, as Clerk sent it.
    body             BYTEA NOT NULL,
    -- AMQP headers and properties as JSON; a replay publishes them again.
    headers          JSONB NOT NULL DEFAULT '{}',
    properties       JSONB NOT NULL DEFAULT '{}',
    -- Clerk's `data.updated_at` of the event, when the body has one: whether the database
    -- already holds this version of the user (or a later one).
    event_updated_at TIMESTAMPTZ,
    reason           TEXT NOT NULL,
    detail           TEXT,
    attempts         INTEGER,
    first_failed_at  TIMESTAMPTZ NOT NULL,
    last_failed_at   TIMESTAMPTZ NOT NULL,
    status           TEXT NOT NULL DEFAULT 'open',
    replay_count     INTEGER NOT NULL DEFAULT 0,
    -- When the letter first reached this table, and when its row last changed (status or
    -- failure): retention counts from `updated_at`.
    arrived_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT dead_letters_svix_id UNIQUE (svix_id),
    CONSTRAINT dead_letters_status CHECK (status IN ('open', 'replayed', 'resolved', 'discarded')),
    CONSTRAINT dead_letters_replay_count_not_negative CHECK (replay_count >= 0)
);

-- The listing (newest failure first, keyset on (last_failed_at, id)), with and without a reason.
CREATE INDEX idx_dead_letters_listing ON dead_letters (status, last_failed_at DESC, id DESC);
CREATE INDEX idx_dead_letters_reason ON dead_letters (status, reason, last_failed_at DESC, id DESC);
CREATE INDEX idx_dead_letters_user_id ON dead_letters (user_id);
-- Retention: only closed letters are ever purged.
CREATE INDEX idx_dead_letters_closed ON dead_letters (updated_at) WHERE status <> 'open';

-- Who did what to which letters: one row per operator action (a replay, a discard), or per
-- reconcile run that resolved letters. Kept when the letters are purged.
CREATE TABLE dead_letter_actions (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- The operator's name (console login or `--actor`), or `reconcile`.
    actor   TEXT NOT NULL,
    source  TEXT NOT NULL,
    action  TEXT NOT NULL,
    -- The filter the letters were chosen by, as the operator gave it.
    filter  JSONB NOT NULL DEFAULT '{}',
    -- A discard's reason.
    note    TEXT,
    -- Letters chosen, and letters the action changed.
    chosen  BIGINT NOT NULL DEFAULT 0,
    changed BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT dead_letter_actions_source CHECK (source IN ('cli', 'console', 'reconcile')),
    CONSTRAINT dead_letter_actions_action CHECK (action IN ('replay', 'discard', 'resolve'))
);

CREATE INDEX idx_dead_letter_actions_at ON dead_letter_actions (at DESC);

-- One letter's life: each failure that brought it here, each replay, resolve and discard.
CREATE TABLE dead_letter_history (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dead_letter_id BIGINT NOT NULL REFERENCES dead_letters (id) ON DELETE CASCADE,
    at             TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    event          TEXT NOT NULL,
    action_id      BIGINT REFERENCES dead_letter_actions (id) ON DELETE SET NULL,
    reason         TEXT,
    attempts       INTEGER,
    CONSTRAINT dead_letter_history_event
        CHECK (event IN ('failed', 'replayed', 'resolved', 'discarded'))
);

CREATE INDEX idx_dead_letter_history_letter ON dead_letter_history (dead_letter_id, at);
