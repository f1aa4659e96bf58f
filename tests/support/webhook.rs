//! A webhook for `--notify` tests: an HTTP/1.1 server on 127.0.0.1 in a thread that answers
//! each request with the next status of its script (the last one from then on) and records
//! what it was sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request the webhook received.
#[derive(Debug, Clone)]
pub struct Received {
    pub request_line: String,
    pub content_type: Option<String>,
    pub body: String,
}

pub struct Webhook {
    /// Its URL, with a path standing for a webhook's secret token.
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Webhook {
    pub fn answering(statuses: &[u16]) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/services/T000/B000/s3cr3t-t0ken",
            listener.local_addr().unwrap().port()
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let (log, statuses) = (received.clone(), statuses.to_vec());
        // Detached: it ends with the test process.
        std::thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&mut stream) else {
                    continue;
                };
                log.lock().unwrap().push(request);
                let status = statuses[i.min(statuses.len() - 1)];
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            }
        });
        Webhook { url, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let (mut length, mut content_type) = (0, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => content_type = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        request_line: request_line.trim_end().to_string(),
        content_type,
        body: String::from_utf8(body).ok()?,
    })
}

/// A URL nothing listens at: a port taken and given back at once.
pub fn unreachable_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/services/T000/B000/s3cr3t-t0ken")
}

/// `cmd` run with each of `urls`' variables set to its URL or, for `None`, unset (whatever the
/// environment running the tests holds); its output, checked to print no webhook's secret.
pub fn run_with_urls(
    mut cmd: std::process::Command,
    urls: &[(&str, Option<&str>)],
) -> std::process::Output {
    for (var, url) in urls {
        match url {
            Some(url) => cmd.env(var, url),
            None => cmd.env_remove(var),
        };
    }
    let out = cmd.output().expect("rallyctl runs");
    let printed = super::context::text(&out);
    assert!(
        !printed.contains("s3cr3t"),
        "a secret is printed: {printed}"
    );
    out
}
