-- Analytics events. One row per event; event_id makes ingestion idempotent.
CREATE TABLE events (
    event_id    uuid             PRIMARY KEY,
    kind        text             NOT NULL
        CHECK (kind IN ('question', 'answer', 'login', 'api_call', 'error', 'exchange')),
    service     text             NOT NULL CHECK (service <> ''),
    user_id     text,
    occurred_at timestamptz      NOT NULL,
    received_at timestamptz      NOT NULL DEFAULT now(),
    latency_ms  double precision CHECK (latency_ms >= 0),
    properties  jsonb            NOT NULL DEFAULT '{}'::jsonb
        CHECK (jsonb_typeof(properties) = 'object'),
    -- Normalised properties.question of 'question' events (computed at ingestion).
    question    text
);

CREATE INDEX events_occurred_at_idx ON events (occurred_at);
CREATE INDEX events_kind_occurred_at_idx ON events (kind, occurred_at);
CREATE INDEX events_service_occurred_at_idx ON events (service, occurred_at);
CREATE INDEX events_user_id_idx ON events (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX events_question_idx ON events (question) WHERE question IS NOT NULL;
