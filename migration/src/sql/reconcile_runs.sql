-- The self-healing reconcile: one lease row elects the one replica that runs it, every run is
-- recorded, and a deletion made by a run says so on its tombstone so it can be undone.

-- One row per kind of job ('reconcile'). `epoch` grows by one at every take: it is the fencing
-- token each of the run's writes is checked against, so a holder that lost the lease (paused,
-- partitioned, killed without release) cannot write after the next holder took it.
CREATE TABLE job_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT,
    epoch      BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    CONSTRAINT job_leases_epoch_not_negative CHECK (epoch >= 0)
);

INSERT INTO job_leases (name) VALUES ('reconcile');

CREATE TABLE reconcile_runs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger     TEXT NOT NULL,
    holder      TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    applied     BOOLEAN NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    finished_at TIMESTAMPTZ,
    result      TEXT NOT NULL DEFAULT 'running',
    -- Drift found, per class: {"missing": 3, "stale": 1, ...}.
    counts      JSONB NOT NULL DEFAULT '{}',
    repaired    BIGINT NOT NULL DEFAULT 0,
    deleted     BIGINT NOT NULL DEFAULT 0,
    error       TEXT,
    -- When `worker reconcile undo` lifted this run's tombstones.
    undone_at   TIMESTAMPTZ,
    CONSTRAINT reconcile_runs_trigger CHECK (trigger IN ('schedule', 'manual')),
    CONSTRAINT reconcile_runs_result
        CHECK (result IN ('running', 'succeeded', 'failed', 'lost_lease', 'abandoned'))
);

CREATE INDEX idx_reconcile_runs_started_at ON reconcile_runs (started_at DESC);

-- The run whose orphan deletion left this tombstone; NULL for a `user.deleted` webhook.
ALTER TABLE user_tombstones
    ADD COLUMN reconcile_run BIGINT REFERENCES reconcile_runs (id) ON DELETE SET NULL;

CREATE INDEX idx_user_tombstones_reconcile_run ON user_tombstones (reconcile_run)
    WHERE reconcile_run IS NOT NULL;
