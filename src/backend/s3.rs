//! [`Objects`] on S3, or a store that speaks its API (MinIO, Ceph, moto), through the AWS SDK.
//!
//! The backend is called from synchronous code (state writes happen under the state's mutex,
//! from the walk's tasks and from plain commands alike), so the client runs on a small runtime
//! of its own and each call waits for its answer: no caller needs to be async, and none blocks
//! the runtime of the apply it serves.

use std::future::Future;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use base64::Engine;

use super::objects::{Cond, Listed, Object, ObjectError, Objects};
use crate::plan::S3Config;
use crate::state::sha256_hex;

/// The metadata key holding a file's sha256, readable by any S3-compatible store.
const SHA256_META: &str = "sha256";

pub struct S3 {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    bucket: String,
}

impl S3 {
    /// A client for `config`'s bucket: the standard credential chain, or `config`'s profile,
    /// or a role assumed from it; path-style addressing whenever an endpoint is set (in the
    /// backend block or through `AWS_ENDPOINT_URL`), as S3-compatible stores need.
    pub fn connect(config: &S3Config) -> Result<S3, ObjectError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rallyctl-s3")
            .enable_all()
            .build()
            .map_err(|e| ObjectError::Other(format!("cannot start the S3 client: {e}")))?;
        let config_for = config.clone();
        let client = wait(&runtime, async move { client(&config_for).await })?;
        Ok(S3 {
            runtime: Some(runtime),
            client,
            bucket: config.bucket.clone(),
        })
    }

    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        wait(self.runtime.as_ref().expect("runtime until dropped"), f)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a runtime the drop happens on forbids.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `f` on `runtime` and waits for it from any thread, async or not.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    f: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("the S3 runtime answers every call")
}

async fn client(config: &S3Config) -> Result<Client, ObjectError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(profile) = &config.profile {
        // The profile's own credentials: the default chain would take AWS_ACCESS_KEY_ID from
        // the environment first, which are the instances' account's.
        let credentials = aws_config::profile::ProfileFileCredentialsProvider::builder()
            .profile_name(profile)
            .build();
        loader = loader
            .profile_name(profile)
            .credentials_provider(credentials);
    }
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let base = loader.load().await;
    let mut s3 = aws_sdk_s3::config::Builder::from(&base);
    if let Some(role) = &config.role_arn {
        let provider = aws_config::sts::AssumeRoleProvider::builder(role)
            .session_name("rallyctl-backend")
            .configure(&base)
            .build()
            .await;
        s3 = s3.credentials_provider(provider);
    }
    if let Some(endpoint) = &config.endpoint {
        s3 = s3.endpoint_url(endpoint);
    }
    let endpoint_set = config.endpoint.is_some()
        || base.endpoint_url().is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    if endpoint_set {
        s3 = s3.force_path_style(true);
    }
    Ok(Client::from_conf(s3.build()))
}

/// A key as `x-amz-copy-source` wants it: URL-encoded, its `/` kept.
fn encode_key(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// 412 and 409 by their codes (the SDK models neither), anything else with its message.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> ObjectError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    match (e.code(), status) {
        (Some("PreconditionFailed"), _) | (_, Some(412)) => ObjectError::PreconditionFailed,
        (Some("ConditionalRequestConflict"), _) | (_, Some(409)) => ObjectError::Conflict,
        _ => ObjectError::Other(describe(&e)),
    }
}

fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => {
            // Transport errors say what went wrong in their sources.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

impl Objects for S3 {
    fn get(&self, key: &str) -> Result<Option<Object>, ObjectError> {
        let request = self.client.get_object().bucket(&self.bucket).key(key);
        self.run(async move {
            let out = match request.send().await {
                Ok(out) => out,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                    return Ok(None);
                }
                Err(e) => return Err(classify(e)),
            };
            let etag = out.e_tag().unwrap_or_default().to_owned();
            let sha256 = out.metadata().and_then(|m| m.get(SHA256_META)).cloned();
            let bytes = out
                .body
                .collect()
                .await
                .map_err(|e| ObjectError::Other(format!("reading the object: {e}")))?
                .into_bytes()
                .to_vec();
            Ok(Some(Object {
                bytes,
                etag,
                sha256,
            }))
        })
    }

    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        sha256: &str,
        cond: Cond,
    ) -> Result<String, ObjectError> {
        let digest = hex::decode(sha256).map_err(|e| ObjectError::Other(e.to_string()))?;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .metadata(SHA256_META, sha256)
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(digest))
            .body(ByteStream::from(bytes));
        request = match cond {
            Cond::Any => request,
            Cond::Absent => request.if_none_match("*"),
            Cond::Matches(etag) => request.if_match(etag),
        };
        self.run(async move {
            let out = request.send().await.map_err(classify)?;
            Ok(out.e_tag().unwrap_or_default().to_owned())
        })
    }

    fn stored_sha256(&self, key: &str) -> Result<Option<String>, ObjectError> {
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled);
        let kept = self.run(async move {
            match request.send().await {
                Ok(out) => Ok(Some(out.checksum_sha256().map(str::to_owned))),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                Err(e) => Err(classify(e)),
            }
        })?;
        match kept {
            None => Ok(None),
            // A full-object checksum is the base64 digest; a multipart one ends `-N`.
            Some(Some(b64)) if !b64.contains('-') => base64::engine::general_purpose::STANDARD
                .decode(&b64)
                .map(|d| Some(hex::encode(d)))
                .map_err(|e| ObjectError::Other(format!("checksum {b64}: {e}"))),
            // A store that keeps no checksum: hash what it serves.
            Some(_) => Ok(self.get(key)?.map(|o| sha256_hex(&o.bytes))),
        }
    }

    fn copy(&self, from: &str, to: &str, if_match: &str) -> Result<(), ObjectError> {
        let request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(format!("{}/{}", self.bucket, encode_key(from)))
            .copy_source_if_match(if_match);
        self.run(async move { request.send().await.map(|_| ()).map_err(classify) })
    }

    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let request = self.client.delete_object().bucket(&self.bucket).key(key);
        self.run(async move { request.send().await.map(|_| ()).map_err(classify) })
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, ObjectError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        self.run(async move {
            let mut listed = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(classify)?;
                for object in page.contents() {
                    if let Some(key) = object.key() {
                        listed.push(Listed {
                            key: key.to_owned(),
                            etag: object.e_tag().unwrap_or_default().to_owned(),
                        });
                    }
                }
            }
            listed.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(listed)
        })
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}
