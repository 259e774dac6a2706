//! HTTP client construction: one rustls stack (ring), system roots, sane timeouts.

use std::sync::Once;
use std::time::Duration;

static PROVIDER: Once = Once::new();

pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    PROVIDER.call_once(|| {
        // Only one provider is compiled in; failure means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .build()?)
}
