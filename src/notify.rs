//! The webhook CI is told on: a JSON POST with Slack's `text` and the structured details, sent
//! after a regression, a failed apply or a new change point. The URL carries the webhook's
//! secret token, so nothing here prints it: errors and warnings name its host only.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::history::news::NewChange;
use crate::results::compare::Row;

/// Tries per message, and the wait before the second (doubled before each later one): a
/// webhook that is down for a few seconds still gets the message, one that is down for longer
/// does not hold up the job.
const TRIES: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// One try's bound, connection included: an endpoint that never answers costs at most this.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a message reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `results --compare` found a regression (or a missing metric).
    Regression,
    /// `--fail-on-regression` failed the gate.
    GateFailed,
    /// Some test of an apply failed.
    ApplyFailed,
    /// `history`, or an apply's run, brought a new change point.
    ChangePoint,
}

/// A test an apply could not finish.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub test: String,
    pub step: String,
    pub error: String,
}

/// The message: `text` for Slack and chat tools that show only it, the rest for machines.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub text: String,
    pub kind: Kind,
    pub workspace: String,
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<Row>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<NewChange>,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("the notify URL is no http:// or https:// URL with a host")]
    BadUrl,
    #[error("cannot load the system's root certificates for {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} answered HTTP {status}")]
    Status { host: String, status: u16 },
    #[error("cannot reach {host}: {reason}")]
    Unreachable { host: String, reason: String },
}

impl NotifyError {
    /// Worth another try: the server's trouble or a busy server, not a refusal of the message.
    fn transient(&self) -> bool {
        match self {
            NotifyError::Status { status, .. } => *status >= 500 || *status == 429,
            NotifyError::Unreachable { .. } => true,
            NotifyError::BadUrl | NotifyError::Tls { .. } => false,
        }
    }
}

/// Posts `message` to `url`, retrying transient failures with exponential backoff.
pub async fn send(url: &str, message: &Message) -> Result<(), NotifyError> {
    let uri: http::Uri = url.parse().map_err(|_| NotifyError::BadUrl)?;
    let host = match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) => host.to_string(),
        _ => return Err(NotifyError::BadUrl),
    };
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    // The system's roots only for https: a plain http webhook works on a machine without them.
    let builder = if uri.scheme_str() == Some("https") {
        builder
            .with_provider_and_native_roots(provider)
            .map_err(|source| NotifyError::Tls {
                host: host.clone(),
                source,
            })?
    } else {
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default TLS versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        builder.with_tls_config(config)
    };
    let connector = builder.https_or_http().enable_http1().build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let body = Bytes::from(serde_json::to_vec(message).expect("a message serializes"));
    let mut wait = BACKOFF_BASE;
    let mut tries = 1;
    loop {
        let request = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .map_err(|_| NotifyError::BadUrl)?;
        let outcome = match tokio::time::timeout(TRY_TIMEOUT, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => return Ok(()),
            Ok(Ok(response)) => NotifyError::Status {
                host: host.clone(),
                status: response.status().as_u16(),
            },
            Ok(Err(e)) => NotifyError::Unreachable {
                host: host.clone(),
                reason: reason(&e, url),
            },
            Err(_) => NotifyError::Unreachable {
                host: host.clone(),
                reason: format!("no answer in {} s", TRY_TIMEOUT.as_secs()),
            },
        };
        if tries == TRIES || !outcome.transient() {
            return Err(outcome);
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        tries += 1;
    }
}

/// The innermost cause of a client error (hyper's own says only "client error (Connect)"),
/// with the URL taken out should a cause quote it.
fn reason(e: &(dyn std::error::Error + 'static), url: &str) -> String {
    let mut inner = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string().replace(url, "<notify URL>")
}

/// The most regressions or failures a message's `text` names, so it stays a few lines in a chat.
pub const TEXT_ROWS: usize = 5;
