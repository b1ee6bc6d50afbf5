//! JSON logs on stdout via `tracing-subscriber` (filter from `RUST_LOG`,
//! default `info`).

use tracing_subscriber::EnvFilter;

/// Install the JSON subscriber once; later calls are no-ops (handy in tests).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(std::io::stdout)
        .try_init();
}
