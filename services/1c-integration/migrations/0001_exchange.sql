-- Objects pulled from 1C by the scheduled exchange, one row per Ref_Key.
CREATE TABLE onec_objects (
    set_name          text        NOT NULL,
    ref_key           uuid        NOT NULL,
    data_version      text        NOT NULL,
    data              jsonb       NOT NULL,
    deleted_in_source boolean     NOT NULL DEFAULT false,
    first_seen_at     timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (set_name, ref_key)
);

-- One row per exchange run of one entity set.
CREATE TABLE exchange_log (
    id            bigserial   PRIMARY KEY,
    set_name      text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    rows_listed   integer     NOT NULL DEFAULT 0,
    rows_fetched  integer     NOT NULL DEFAULT 0,
    rows_upserted integer     NOT NULL DEFAULT 0,
    rows_deleted  integer     NOT NULL DEFAULT 0,
    error         text
);
CREATE INDEX exchange_log_started ON exchange_log (started_at DESC, id DESC);
CREATE INDEX exchange_log_set ON exchange_log (set_name, started_at DESC);
