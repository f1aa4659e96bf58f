//! [`Objects`] on S3, or a store that speaks its API (MinIO, Ceph, moto), through the AWS SDK.
//!
//! The backend is called from synchronous code (state writes happen under the state's mutex,
//! from the walk's tasks and from plain commands alike), so the client runs on a small runtime
//! of its own and each call waits for its answer: no caller needs to be async, and none blocks
//! the runtime of the apply it serves.

use std::future::Future;
use std::sync::Mutex;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
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
    /// Replaced once by a client for the bucket's own region when it answers from another.
    client: Mutex<Client>,
    bucket: String,
    /// The store is AWS's S3, which takes checksums. An S3-compatible store is sent none it
    /// does not require (many refuse the headers), and the sha256 of what it keeps is read
    /// back instead.
    checksums: bool,
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
        let (client, compatible) = wait(&runtime, async move { client(&config_for).await })?;
        Ok(S3 {
            runtime: Some(runtime),
            client: Mutex::new(client),
            bucket: config.bucket.clone(),
            checksums: !compatible,
        })
    }

    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        wait(self.runtime.as_ref().expect("runtime until dropped"), f)
    }

    /// Runs `op` on the client; when the bucket answers from another region (the SDK does not
    /// follow S3's redirect), once more on a client for the bucket's region, kept for the
    /// calls after.
    fn call<T, Fut>(&self, op: impl Fn(Client) -> Fut) -> Result<T, Failed>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, Failed>> + Send + 'static,
    {
        let client = self.client.lock().expect("client").clone();
        match self.run(op(client.clone())) {
            Err(Failed::Moved(named)) => {
                let moved = self.follow(&client, named)?;
                self.run(op(moved))
            }
            done => done,
        }
    }

    /// A client for the bucket's region: the one its answer named, else the one HeadBucket
    /// names (`x-amz-bucket-region`, even on a refusal).
    fn follow(&self, client: &Client, named: Option<String>) -> Result<Client, Failed> {
        let configured = region_of(client);
        let found = match named {
            Some(region) => Some(region),
            None => {
                let request = client.head_bucket().bucket(&self.bucket);
                self.run(async move {
                    match request.send().await {
                        Ok(out) => out.bucket_region().map(str::to_owned),
                        Err(e) => bucket_region_header(&e),
                    }
                })
            }
        };
        match found {
            Some(region) if region != configured => {
                eprintln!(
                    "note: bucket {} is in {region}, not {configured}: reached there (`region = \"{region}\"` in the backend block saves the detour)",
                    self.bucket
                );
                let conf = (client.config().to_builder())
                    .region(Region::new(region))
                    .build();
                let moved = Client::from_conf(conf);
                *self.client.lock().expect("client") = moved.clone();
                Ok(moved)
            }
            _ => Err(Failed::Object(ObjectError::Other(format!(
                "bucket {} is not in {configured} and did not say where it is: set `region` in the backend block to the bucket's region",
                self.bucket
            )))),
        }
    }

    fn object_arn(&self, key: &str) -> String {
        format!("arn:aws:s3:::{}/{key}", self.bucket)
    }

    fn bucket_arn(&self) -> String {
        format!("arn:aws:s3:::{}", self.bucket)
    }

    /// A read S3 refused: without `s3:ListBucket` it answers 403 for a missing object, so a
    /// listing tells a missing object (none) from one the caller may not read.
    fn denied_read(&self, key: &str, message: String) -> Result<Option<Object>, ObjectError> {
        let (bucket, wanted) = (self.bucket.clone(), key.to_owned());
        let listed = self.call(move |client| {
            let (region, wanted) = (region_of(&client), wanted.clone());
            let request = (client.list_objects_v2().bucket(&bucket))
                .prefix(&wanted)
                .max_keys(1);
            async move {
                match request.send().await {
                    Ok(out) => Ok(out.contents().iter().any(|o| o.key() == Some(&*wanted))),
                    Err(e) => Err(classify(e, &region)),
                }
            }
        });
        match listed {
            Ok(false) => Ok(None),
            Ok(true) => Err(ObjectError::Other(format!(
                "{message}: the caller lacks s3:GetObject on {}",
                self.object_arn(key)
            ))),
            Err(Failed::Denied(_)) => Err(ObjectError::Other(format!(
                "{message}: the caller lacks s3:ListBucket on {}, which the S3 backend needs (without it S3 answers 403, not 404, for an object that is not there, so a missing state cannot be told from a forbidden one), and perhaps s3:GetObject on {}",
                self.bucket_arn(),
                self.object_arn(key)
            ))),
            Err(other) => Err(other.into_error(&self.bucket, || {
                format!("s3:ListBucket on {}", self.bucket_arn())
            })),
        }
    }
}

/// How a call failed, before the backend is told.
enum Failed {
    /// The bucket answered from another region than the client's; its region when the
    /// answer named it.
    Moved(Option<String>),
    /// HTTP 403; which permission lacks depends on the call.
    Denied(String),
    Object(ObjectError),
}

impl Failed {
    /// The error as the backend reads it; `needs` names the permission the call takes.
    fn into_error(self, bucket: &str, needs: impl FnOnce() -> String) -> ObjectError {
        match self {
            Failed::Object(e) => e,
            Failed::Denied(message) => {
                ObjectError::Other(format!("{message}: the caller lacks {}", needs()))
            }
            Failed::Moved(named) => ObjectError::Other(format!(
                "bucket {bucket} answers from another region{}: set `region` in the backend block to the bucket's region",
                named.map_or(String::new(), |r| format!(" ({r})"))
            )),
        }
    }
}

fn region_of(client: &Client) -> String {
    client
        .config()
        .region()
        .map_or_else(|| "no region".to_owned(), ToString::to_string)
}

fn bucket_region_header<E>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<String> {
    let raw = e.raw_response()?;
    raw.headers().get("x-amz-bucket-region").map(str::to_owned)
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

/// The client, and whether it reaches an S3-compatible store rather than AWS's S3.
async fn client(config: &S3Config) -> Result<(Client, bool), ObjectError> {
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
        // The SDK's default checksums (CRC32 in a trailer of an aws-chunked body) are what
        // many S3-compatible stores refuse.
        s3 = s3
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Ok((Client::from_conf(s3.build()), endpoint_set))
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

/// 412, 409 and 501 by their codes (the SDK models none), a bucket answering from another
/// region than `region` (301, or a signature for the wrong region), a refusal (403), anything
/// else with its message.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    region: &str,
) -> Failed {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let named = bucket_region_header(&e);
    match (e.code(), status) {
        (Some("PreconditionFailed"), _) | (_, Some(412)) => {
            Failed::Object(ObjectError::PreconditionFailed)
        }
        (Some("ConditionalRequestConflict"), _) | (_, Some(409)) => {
            Failed::Object(ObjectError::Conflict)
        }
        (Some("NotImplemented"), _) | (_, Some(501)) => {
            Failed::Object(ObjectError::NotImplemented(describe(&e)))
        }
        (Some("PermanentRedirect" | "AuthorizationHeaderMalformed"), _) | (_, Some(301)) => {
            Failed::Moved(named)
        }
        _ if named.as_deref().is_some_and(|n| n != region) => Failed::Moved(named),
        (_, Some(403)) => Failed::Denied(describe(&e)),
        _ => Failed::Object(ObjectError::Other(describe(&e))),
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
        let (bucket, wanted) = (self.bucket.clone(), key.to_owned());
        let got = self.call(move |client| {
            let region = region_of(&client);
            let request = client.get_object().bucket(&bucket).key(&wanted);
            async move {
                let out = match request.send().await {
                    Ok(out) => out,
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                        return Ok(None);
                    }
                    Err(e) => return Err(classify(e, &region)),
                };
                let etag = out.e_tag().unwrap_or_default().to_owned();
                let sha256 = out.metadata().and_then(|m| m.get(SHA256_META)).cloned();
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| {
                        Failed::Object(ObjectError::Other(format!("reading the object: {e}")))
                    })?
                    .into_bytes()
                    .to_vec();
                Ok(Some(Object {
                    bytes,
                    etag,
                    sha256,
                }))
            }
        });
        match got {
            Err(Failed::Denied(message)) => self.denied_read(key, message),
            got => got.map_err(|f| {
                f.into_error(&self.bucket, || {
                    format!("s3:GetObject on {}", self.object_arn(key))
                })
            }),
        }
    }

    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        sha256: &str,
        cond: Cond,
    ) -> Result<String, ObjectError> {
        let digest = hex::decode(sha256).map_err(|e| ObjectError::Other(e.to_string()))?;
        let checksum =
            (self.checksums).then(|| base64::engine::general_purpose::STANDARD.encode(digest));
        let (bucket, target, sha256) = (self.bucket.clone(), key.to_owned(), sha256.to_owned());
        self.call(move |client| {
            let region = region_of(&client);
            let mut request = (client.put_object().bucket(&bucket).key(&target))
                .metadata(SHA256_META, &sha256)
                .set_checksum_sha256(checksum.clone())
                .body(ByteStream::from(bytes.clone()));
            request = match &cond {
                Cond::Any => request,
                Cond::Absent => request.if_none_match("*"),
                Cond::Matches(etag) => request.if_match(etag),
            };
            async move {
                match request.send().await {
                    Ok(out) => Ok(out.e_tag().unwrap_or_default().to_owned()),
                    Err(e) => Err(classify(e, &region)),
                }
            }
        })
        .map_err(|f| {
            f.into_error(&self.bucket, || {
                format!("s3:PutObject on {}", self.object_arn(key))
            })
        })
    }

    fn stored_sha256(&self, key: &str) -> Result<Option<String>, ObjectError> {
        if !self.checksums {
            return Ok(self.get(key)?.map(|o| sha256_hex(&o.bytes)));
        }
        let (bucket, wanted) = (self.bucket.clone(), key.to_owned());
        let kept = self
            .call(move |client| {
                let region = region_of(&client);
                let request = (client.head_object().bucket(&bucket).key(&wanted))
                    .checksum_mode(ChecksumMode::Enabled);
                async move {
                    match request.send().await {
                        Ok(out) => Ok(Some(out.checksum_sha256().map(str::to_owned))),
                        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                            Ok(None)
                        }
                        Err(e) => Err(classify(e, &region)),
                    }
                }
            })
            .map_err(|f| {
                f.into_error(&self.bucket, || {
                    format!("s3:GetObject on {}", self.object_arn(key))
                })
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
        let bucket = self.bucket.clone();
        let source = format!("{}/{}", self.bucket, encode_key(from));
        let (target, if_match) = (to.to_owned(), if_match.to_owned());
        self.call(move |client| {
            let region = region_of(&client);
            let request = (client.copy_object().bucket(&bucket).key(&target))
                .copy_source(&source)
                .copy_source_if_match(&if_match);
            async move {
                request
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| classify(e, &region))
            }
        })
        .map_err(|f| {
            f.into_error(&self.bucket, || {
                format!(
                    "s3:GetObject on {} or s3:PutObject on {}",
                    self.object_arn(from),
                    self.object_arn(to)
                )
            })
        })
    }

    fn delete(&self, key: &str, if_match: Option<&str>) -> Result<(), ObjectError> {
        let (bucket, target) = (self.bucket.clone(), key.to_owned());
        let if_match = if_match.map(str::to_owned);
        let conditional = if_match.is_some();
        self.call(move |client| {
            let region = region_of(&client);
            let request = (client.delete_object().bucket(&bucket).key(&target))
                .set_if_match(if_match.clone());
            async move {
                match request.send().await {
                    Ok(_) => Ok(()),
                    // A conditional delete of a missing object: it is not that version.
                    Err(e)
                        if conditional
                            && e.raw_response().is_some_and(|r| r.status().as_u16() == 404) =>
                    {
                        Err(Failed::Object(ObjectError::PreconditionFailed))
                    }
                    Err(e) => Err(classify(e, &region)),
                }
            }
        })
        .map_err(|f| {
            f.into_error(&self.bucket, || {
                format!("s3:DeleteObject on {}", self.object_arn(key))
            })
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, ObjectError> {
        let (bucket, below) = (self.bucket.clone(), prefix.to_owned());
        self.call(move |client| {
            let region = region_of(&client);
            let mut pages = (client.list_objects_v2().bucket(&bucket))
                .prefix(&below)
                .into_paginator()
                .send();
            async move {
                let mut listed = Vec::new();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| classify(e, &region))?;
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
            }
        })
        .map_err(|f| {
            f.into_error(&self.bucket, || {
                format!("s3:ListBucket on {}", self.bucket_arn())
            })
        })
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}
