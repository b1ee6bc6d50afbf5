//! JSON logs on stdout via `tracing-subscriber` (filter from `RUST_LOG`,
//! default `info`).

use tracing_subscriber::EnvFilter;

/// Install the JSON subscriber once; later calls are no-ops (handy in tests).
pub fn init_tracing() {
    init_tracing_with_default("info");
}

/// Like [`init_tracing`], with `default_filter` when `RUST_LOG` is unset.
pub fn init_tracing_with_default(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    init_with(filter);
}

/// Like [`init_tracing`], with exactly this filter (ignores `RUST_LOG`).
pub fn init_tracing_with_filter(filter: &str) {
    init_with(EnvFilter::new(filter));
}

fn init_with(filter: EnvFilter) {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(std::io::stdout)
        .try_init();
}
