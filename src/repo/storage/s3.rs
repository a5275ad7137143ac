//! A repository in a bucket (and prefix) of an S3-compatible object store, through opendal's
//! blocking operator, as rustic does: whole-object PUTs (an object appears whole or not at all),
//! conditional PUTs where a name must not be taken twice, ranged GETs, and retries with backoff
//! on 5xx answers and timeouts. Credentials come from the usual AWS variables or profile and are
//! never put in a message.

use std::collections::HashMap;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use opendal::options::{ListOptions, ReadOptions, WriteOptions};
use opendal::{ErrorKind, Operator};

use super::disk_cache::DiskCache;
use super::{Object, Reuse, Storage, StorageError, Traffic, Upload};
use crate::repo::fsutil::crash_point;

/// How often a request that failed for a reason that may pass (5xx, reset, timeout) is tried
/// again, waiting twice as long each time from `FIRST_BACKOFF`: about 6 s in all.
const RETRIES: usize = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// A request that sends or receives nothing for this long has failed (and is retried).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a single request may take, a pack's PUT included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_REGION: &str = "us-east-1";

/// Where a repository is in an object store: `s3:https://HOST[:PORT]/BUCKET[/PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// `https://HOST[:PORT]` (or `http://`).
    pub endpoint: String,
    pub bucket: String,
    /// Folder-like prefix inside the bucket, without slashes at either end; may be empty.
    pub prefix: String,
}

impl S3Location {
    /// Parses what follows `s3:`; without a scheme, https.
    pub fn parse(text: &str) -> Result<S3Location, StorageError> {
        let bad = |why: &str| {
            StorageError::BadLocation(format!(
                "not an object-store repository address ({why}): use s3:https://HOST[:PORT]/BUCKET[/PREFIX]"
            ))
        };
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => ("https", text),
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.contains('@') {
            // Said without echoing the address: what precedes '@' is a secret.
            return Err(StorageError::BadLocation(
                "credentials do not belong in the repository address: give them in AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
                    .into(),
            ));
        }
        // HOST, HOST:PORT, [IPv6] or [IPv6]:PORT.
        let (name, port) = match host.strip_prefix('[').and_then(|h| h.split_once(']')) {
            Some((v6, rest)) if !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') => {
                match rest.strip_prefix(':') {
                    Some(port) => ("[]", Some(port)),
                    None if rest.is_empty() => ("[]", None),
                    None => return Err(bad("no usable host name")),
                }
            }
            _ => match host.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            },
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._[]".contains(&b)) {
            return Err(bad("no usable host name"));
        }
        if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
            return Err(bad("the port must be a number from 1 to 65535"));
        }
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let bucket = parts.next().ok_or_else(|| bad("no bucket"))?.to_string();
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(bad("a bucket name is 3 to 63 lowercase letters, digits, '-' or '.'"));
        }
        let prefix: Vec<&str> = parts.collect();
        if prefix.iter().any(|p| *p == "." || *p == ".." || p.contains(['?', '#', '\\'])) {
            return Err(bad("the prefix may not hold '.', '..', '?', '#' or '\\' parts"));
        }
        Ok(S3Location { endpoint: format!("{scheme}://{host}"), bucket, prefix: prefix.join("/") })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3:{}/{}", self.endpoint, self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// What a user may set beyond the address (`--s3-*` options, or the AWS variables).
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// The region to sign for; else AWS_REGION, AWS_DEFAULT_REGION, the profile's, or us-east-1
    /// (which stores that ignore regions accept).
    pub region: Option<String>,
    /// A PEM file of certificate authorities to trust besides the system's (a private store).
    pub ca_file: Option<PathBuf>,
    /// BUCKET.HOST addressing instead of HOST/BUCKET (AWS itself; most other stores want paths).
    pub virtual_host: bool,
    /// A local folder for what is read again and again (index pages, folder listings,
    /// snapshot records), and the most bytes it may hold.
    pub cache: Option<(PathBuf, u64)>,
}

/// Small reads and ranges read again are served from aligned blocks of this size, the last
/// `BLOCKS_KEPT` kept in memory (32 MiB); blocks of ranges read again (listings, index pages)
/// are kept on disk too.
const BLOCK: u64 = 1 << 20;
const BLOCKS_KEPT: usize = 32;
const FETCH_STRIPES: usize = 16;
/// Reads from this size up are fetched as they are (a chunk of a large file).
const SMALL_READ: u64 = 256 * 1024;

/// Blocks of objects by (name, block number).
type Blocks = lru::LruCache<(String, u64), Arc<Vec<u8>>>;

/// Cheap to share: a pack upload holds it until it is stored.
pub struct S3(Arc<Shared>);

impl std::ops::Deref for S3 {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    location: S3Location,
    options: S3Options,
    region: String,
    client: RwLock<Arc<Client>>,
    cache: Option<DiskCache>,
    /// Sizes of packs and index files (which never change), from listings.
    sizes: Mutex<HashMap<String, u64>>,
    /// Recently read blocks of objects (see `read_blocks`), and locks that let one thread at a
    /// time fetch a block (by a hash of the block's name).
    blocks: Mutex<Blocks>,
    fetching: [Mutex<()>; FETCH_STRIPES],
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// When the store last could not be reached (after retries), and why: for a while after,
    /// requests fail at once instead of each waiting out its own retries (a mount's reader of
    /// thousands of files would otherwise wait minutes per file).
    unreachable_since: Mutex<Option<(Instant, String)>>,
}

/// How long requests fail at once after the store could not be reached; the first one after
/// asks the store again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(30);

impl S3 {
    pub fn open(location: S3Location, options: &S3Options) -> Result<S3, StorageError> {
        Shared::open(location, options).map(|shared| S3(Arc::new(shared)))
    }
}

/// The network side: its own runtime's threads, which a forked process (the mount's daemon)
/// does not inherit, so a process makes its own (see `Shared::client`).
struct Client {
    pid: u32,
    operator: opendal::blocking::Operator,
    /// Kept for bucket creation, which opendal does not do.
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Shared {
    fn open(location: S3Location, options: &S3Options) -> Result<Shared, StorageError> {
        let region = options
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let client = Client::new(&location, options, &region)?;
        Ok(Shared {
            location,
            options: options.clone(),
            region,
            client: RwLock::new(Arc::new(client)),
            cache: options.cache.as_ref().and_then(|(dir, limit)| DiskCache::open(dir, *limit)),
            sizes: Mutex::new(HashMap::new()),
            blocks: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(BLOCKS_KEPT).expect("nonzero"))),
            fetching: std::array::from_fn(|_| Mutex::new(())),
            requests: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            unreachable_since: Mutex::new(None),
        })
    }

    /// This process's client: one made before a fork has no runtime threads in the child, and
    /// is left alone (never dropped, which would wait for those threads).
    fn client(&self) -> Result<Arc<Client>, StorageError> {
        if let Some((since, why)) = &*self.unreachable_since.lock().expect("unreachable lock") {
            if since.elapsed() < ASK_AGAIN_AFTER {
                let why = format!("{why} (a moment ago; asked again within {} s)", ASK_AGAIN_AFTER.as_secs());
                return Err(StorageError::Unreachable { location: self.location.to_string(), why });
            }
        }
        let current = self.client.read().expect("client lock").clone();
        if current.pid == std::process::id() {
            return Ok(current);
        }
        let mut slot = self.client.write().expect("client lock");
        if slot.pid != std::process::id() {
            let fresh = Arc::new(Client::new(&self.location, &self.options, &self.region)?);
            std::mem::forget(std::mem::replace(&mut *slot, fresh));
        }
        Ok(slot.clone())
    }
}

impl Client {
    fn new(location: &S3Location, options: &S3Options, region: &str) -> Result<Client, StorageError> {
        let bad = |why: String| StorageError::BadLocation(format!("{location}: {why}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("phonebak-s3")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the network runtime: {e}")))?;
        let mut builder = opendal::services::S3::default()
            .endpoint(&location.endpoint)
            .bucket(&location.bucket)
            .root(&format!("/{}", location.prefix))
            .region(region)
            .disable_ec2_metadata();
        if options.virtual_host {
            builder = builder.enable_virtual_host_style();
        }
        let http = http_client(options.ca_file.as_deref()).map_err(bad)?;
        let operator = Operator::new(builder).map_err(|e| bad(e.to_string()))?.finish();
        let operator = operator
            .layer(opendal::layers::HttpClientLayer::new(opendal::raw::HttpClient::with(http.clone())))
            .layer(
                opendal::layers::RetryLayer::new()
                    .with_max_times(RETRIES)
                    .with_min_delay(FIRST_BACKOFF)
                    .with_factor(2.0)
                    .with_jitter(),
            )
            .layer(opendal::layers::TimeoutLayer::new().with_timeout(REQUEST_TIMEOUT).with_io_timeout(IO_TIMEOUT));
        let _inside = runtime.enter();
        let operator = opendal::blocking::Operator::new(operator).map_err(|e| bad(e.to_string()))?;
        drop(_inside);
        Ok(Client { pid: std::process::id(), operator, http, runtime })
    }
}

impl Shared {
    /// One request made, moving `sent` and `received` bytes.
    fn count(&self, sent: usize, received: usize) {
        let mut unreachable = self.unreachable_since.lock().expect("unreachable lock");
        if unreachable.is_some() {
            *unreachable = None; // it answered
        }
        drop(unreachable);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(sent as u64, Ordering::Relaxed);
        self.bytes_in.fetch_add(received as u64, Ordering::Relaxed);
    }

    /// Turns an opendal error into what the user can act on. opendal's own text names the
    /// request (address, response headers), never the credentials, which sign in headers.
    fn error(&self, action: &'static str, name: &str, e: opendal::Error) -> StorageError {
        let location = self.location.to_string();
        let text = e.to_string();
        match e.kind() {
            ErrorKind::NotFound => StorageError::NotFound(name.to_string()),
            _ if text.contains("NoSuchBucket") => {
                StorageError::NoBucket { location, bucket: self.location.bucket.clone() }
            }
            ErrorKind::PermissionDenied => StorageError::Denied { location, why: s3_code(&text) },
            // A range past the end of a shorter object (SeaweedFS says `InvalidRange`).
            ErrorKind::RangeNotSatisfied => StorageError::Truncated { name: name.to_string() },
            _ if text.contains("InvalidRange") => StorageError::Truncated { name: name.to_string() },
            _ if e.is_temporary() || text.contains("send http request") => {
                let why = connection_reason(&e, &text);
                *self.unreachable_since.lock().expect("unreachable lock") = Some((Instant::now(), why.clone()));
                StorageError::Unreachable { location, why }
            }
            _ => StorageError::Store { location, action, name: name.to_string(), why: short_reason(&text) },
        }
    }

    fn get(&self, name: &str, range: Option<Range<u64>>) -> Result<Vec<u8>, StorageError> {
        let mut bytes = Vec::new();
        self.get_into(name, range, &mut bytes)?;
        Ok(bytes)
    }

    /// Appends the object's bytes (or `range` of them) to `out`; returns how many.
    fn get_into(&self, name: &str, range: Option<Range<u64>>, out: &mut Vec<u8>) -> Result<usize, StorageError> {
        let options = ReadOptions { range: range.map(Into::into).unwrap_or_default(), ..Default::default() };
        let result = self.client()?.operator.read_options(name, options);
        let buffer = result.map_err(|e| self.error("read", name, e))?;
        let len = buffer.len();
        out.reserve(len);
        for piece in buffer {
            out.extend_from_slice(&piece);
        }
        self.count(0, len);
        Ok(len)
    }

    /// `len` bytes from `offset`, or an error if the object is shorter.
    fn get_exactly(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        let mut bytes = Vec::with_capacity(len);
        self.get_exactly_into(name, offset, len, &mut bytes)?;
        Ok(bytes)
    }

    fn get_exactly_into(&self, name: &str, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<(), StorageError> {
        if self.get_into(name, Some(offset..offset + len as u64), out)? != len {
            return Err(StorageError::Truncated { name: name.to_string() });
        }
        Ok(())
    }

    /// The size of an object that never changes (a pack, an index file): from the last listing,
    /// or asked once.
    fn object_size(&self, name: &str) -> Result<u64, StorageError> {
        if let Some(size) = self.sizes.lock().expect("sizes lock").get(name) {
            return Ok(*size);
        }
        let meta = self.client()?.operator.stat(name).map_err(|e| self.error("look up", name, e))?;
        self.count(0, 0);
        self.sizes.lock().expect("sizes lock").insert(name.to_string(), meta.content_length());
        Ok(meta.content_length())
    }

    /// `len` bytes at `offset` of `name`, appended to `out`. Small reads (small files, listings
    /// of a mount) are served from aligned blocks of `BLOCK` bytes, each fetched once and kept a
    /// while: a restore or a copy of many small files costs a request per block, not per file,
    /// and readers on several threads share them. Blocks of what is read again (`Reuse::Again`)
    /// are also kept in the disk cache. A large read read once (a chunk of a photo, a restore's
    /// piece of a pack) is fetched as it is: a photo costs its own bytes, not its pack's.
    fn read_blocks(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        reuse: Reuse,
        out: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        let end = offset + len as u64;
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let cached = |block: u64| self.blocks.lock().expect("blocks lock").get(&(name.to_string(), block)).cloned();
        let disk = self.cache.as_ref().filter(|_| reuse == Reuse::Again);
        if len as u64 >= SMALL_READ && disk.is_none() {
            return self.read_large(name, offset, len, &cached, out);
        }
        let size = self.object_size(name)?;
        if end > size {
            return Err(StorageError::Truncated { name: name.to_string() });
        }
        out.reserve(len);
        for block in first..=last {
            let start = block * BLOCK;
            let want = BLOCK.min(size - start) as usize;
            let bytes = match cached(block) {
                Some(bytes) => bytes,
                None => {
                    // Readers on other threads that want this block wait for this fetch
                    // instead of fetching it again (a restore's workers read neighbours).
                    let stripe = blake3::hash(format!("{name}#{block}").as_bytes()).as_bytes()[0] as usize;
                    let _fetching = self.fetching[stripe % FETCH_STRIPES].lock().expect("fetch lock");
                    match cached(block) {
                        Some(bytes) => bytes,
                        None => {
                            let key = format!("{name}#{start}");
                            let bytes = match disk.and_then(|d| d.get(&key)).filter(|b| b.len() == want) {
                                Some(bytes) => bytes,
                                None => {
                                    let bytes = self.get_exactly(name, start, want)?;
                                    if let Some(disk) = disk {
                                        disk.put(&key, &bytes);
                                    }
                                    bytes
                                }
                            };
                            let bytes = Arc::new(bytes);
                            self.blocks.lock().expect("blocks lock").put((name.to_string(), block), bytes.clone());
                            bytes
                        }
                    }
                }
            };
            let from = (offset.max(start) - start) as usize;
            let to = (end.min(start + bytes.len() as u64) - start) as usize;
            out.extend_from_slice(&bytes[from..to]);
        }
        Ok(())
    }

    /// A large read: what blocks read for small neighbours already hold at its start and end
    /// comes from them, the rest in one request (nothing is fetched twice).
    fn read_large(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        cached: &dyn Fn(u64) -> Option<Arc<Vec<u8>>>,
        out: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        let end = offset + len as u64;
        out.reserve(len);
        // The cached blocks covering [offset, from), appended now, and [to, end), at the end.
        let mut from = offset;
        while from < end {
            let Some(block) = cached(from / BLOCK) else { break };
            let start = from / BLOCK * BLOCK;
            let until = end.min(start + block.len() as u64);
            if until <= from {
                break;
            }
            out.extend_from_slice(&block[(from - start) as usize..(until - start) as usize]);
            from = until;
        }
        let mut tail = Vec::new();
        let mut to = end;
        while to > from {
            let Some(block) = cached((to - 1) / BLOCK) else { break };
            let start = (to - 1) / BLOCK * BLOCK;
            let begin = from.max(start);
            if start + (block.len() as u64) < to {
                break;
            }
            tail.push((block, (begin - start) as usize..(to - start) as usize));
            to = begin;
        }
        if to > from {
            self.get_exactly_into(name, from, (to - from) as usize, out)?;
        }
        for (block, range) in tail.into_iter().rev() {
            out.extend_from_slice(&block[range]);
        }
        Ok(())
    }

    /// Stores a whole object.
    fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        crash_point("put", Path::new(name));
        let len = bytes.len();
        self.client()?.operator.write(name, bytes).map_err(|e| self.error("write", name, e))?;
        self.count(len, 0);
        Ok(())
    }

    /// Creates the bucket with a signed `PUT /BUCKET` (opendal has no call for it).
    fn create_bucket(&self) -> Result<(), StorageError> {
        let location = self.location.to_string();
        let url = format!("{}/{}", self.location.endpoint, self.location.bucket);
        let unreachable = |e: &(dyn std::error::Error + 'static)| StorageError::Unreachable {
            location: location.clone(),
            why: connection_reason(e, &e.to_string()),
        };
        let signer = reqsign::AwsV4Signer::new("s3", &self.region);
        let client = self.client()?;
        let http = &client.http;
        let loader =
            reqsign::AwsDefaultLoader::new(http.clone(), reqsign::AwsConfig::default().from_profile().from_env())
                .with_disable_ec2_metadata();
        let status = client.runtime.block_on(async {
            let credential = loader.load().await.map_err(|e| unreachable(e.as_ref()))?.ok_or_else(|| {
                StorageError::Denied { location: location.clone(), why: "no credentials are set".into() }
            })?;
            let mut request = http.put(&url).header("content-length", "0").build().map_err(|e| unreachable(&e))?;
            signer.sign(&mut request, &credential).map_err(|e| unreachable(e.as_ref()))?;
            let response = http.execute(request).await.map_err(|e| unreachable(&e))?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            Ok::<_, StorageError>((status, body))
        });
        self.count(0, 0);
        let (status, body) = status?;
        match status.as_u16() {
            200..=299 => Ok(()),
            409 if body.contains("BucketAlreadyOwnedByYou") || body.contains("BucketAlreadyExists") => Ok(()),
            401 | 403 => Err(StorageError::Denied { location, why: s3_code(&body) }),
            _ => Err(StorageError::Store {
                location,
                action: "create the bucket",
                name: self.location.bucket.clone(),
                why: format!("{status}: {}", s3_code(&body)),
            }),
        }
    }
}

/// The client all requests go through: rustls, with the extra authorities of `ca_file`.
fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(file) = ca_file {
        // A regular file of at most 1 MiB: a FIFO would block, a device never end.
        let pem = crate::repo::fsutil::open_regular(file)
            .and_then(|f| {
                let mut pem = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(f, 1 << 20), &mut pem).map(|_| pem)
            })
            .map_err(|e| format!("cannot read the CA file {}: {e}", file.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{} holds no usable PEM certificate: {e}", file.display()))?;
        if certificates.is_empty() {
            return Err(format!("{} holds no PEM certificate", file.display()));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|e| format!("cannot set up HTTPS: {e}"))
}

/// Why a connection failed, from the innermost causes of `e` (whose own text is `text`): a TLS
/// certificate the machine does not trust is said as such.
fn connection_reason(e: &(dyn std::error::Error + 'static), text: &str) -> String {
    let mut causes = Vec::new();
    let mut cause = e.source();
    while let Some(inner) = cause {
        causes.push(inner.to_string());
        cause = inner.source();
    }
    let all = causes.join(": ");
    if all.contains("certificate") || all.contains("UnknownIssuer") {
        let why = causes.last().cloned().unwrap_or_default();
        return format!(
            "its TLS certificate is not trusted here ({why}): give its certificate authority with --s3-ca-file FILE"
        );
    }
    match causes.last() {
        Some(innermost) => format!("{}: {innermost}", short_reason(text)),
        None => short_reason(text),
    }
}

/// The S3 error code and message of an answer (`AccessDenied: ...`), else its first line.
fn s3_code(text: &str) -> String {
    let field = |tag: &str| {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let start = text.find(&open)? + open.len();
        Some(text[start..start + text[start..].find(&close)?].to_string())
    };
    let quoted = |key: &str| {
        let start = text.find(key)? + key.len();
        Some(text[start..start + text[start..].find('"')?].to_string())
    };
    match (field("Code").or_else(|| quoted("code: \"")), field("Message").or_else(|| quoted("message: \""))) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => short_reason(text),
    }
}

/// The part of an opendal error worth showing: its kind and the innermost cause, without the
/// request's full context.
fn short_reason(text: &str) -> String {
    if text.contains("S3Error") {
        return s3_code(text);
    }
    let kind = text.split([' ', ',']).next().unwrap_or_default();
    let cause = text.rsplit("source: ").next().or_else(|| text.rsplit("=> ").next()).unwrap_or(text);
    let cause: String = cause.chars().take(200).collect();
    if cause == text {
        text.chars().take(200).collect()
    } else {
        format!("{kind}: {cause}")
    }
}

impl Storage for S3 {
    fn location(&self) -> String {
        self.location.to_string()
    }

    fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, StorageError> {
        // Snapshot records never change: each is fetched once.
        let cache = self.cache.as_ref().filter(|_| name.starts_with("snapshots/"));
        if let Some(bytes) = cache.and_then(|c| c.get(name)).filter(|b| b.len() as u64 <= limit) {
            return Ok(bytes);
        }
        // Streamed, and dropped a little past the limit: a huge object planted where a record
        // belongs costs nothing.
        let failed = |e: opendal::Error| self.error("read", name, e);
        let reader = self.client()?.operator.reader(name).map_err(failed)?;
        let mut bytes = Vec::new();
        for piece in reader.into_bytes_iterator(..).map_err(failed)? {
            let piece = piece.map_err(|e| match e.into_inner().map(|inner| inner.downcast::<opendal::Error>()) {
                Some(Ok(e)) => failed(*e),
                Some(Err(other)) => {
                    self.error("read", name, opendal::Error::new(ErrorKind::Unexpected, other.to_string()))
                }
                None => self.error("read", name, opendal::Error::new(ErrorKind::Unexpected, "the read failed")),
            })?;
            bytes.extend_from_slice(&piece);
            if bytes.len() as u64 > limit {
                return Err(StorageError::TooLarge { name: name.to_string() });
            }
        }
        self.count(0, bytes.len());
        if let Some(cache) = cache {
            cache.put(name, &bytes);
        }
        Ok(bytes)
    }

    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        reuse: Reuse,
        out: &mut Vec<u8>,
    ) -> Result<Range<usize>, StorageError> {
        out.clear();
        if len == 0 {
            return Ok(0..0);
        }
        self.read_blocks(name, offset, len, reuse, out)?;
        Ok(0..len)
    }

    fn size(&self, name: &str) -> Result<u64, StorageError> {
        let meta = self.client()?.operator.stat(name).map_err(|e| self.error("look up", name, e))?;
        self.count(0, 0);
        Ok(meta.content_length())
    }

    fn list(&self, dir: &str) -> Result<Vec<Object>, StorageError> {
        let options = ListOptions { recursive: true, ..Default::default() };
        let entries = self.client()?.operator.list_options(&format!("{dir}/"), options).map_err(|e| {
            match self.error("list", dir, e) {
                StorageError::NotFound(_) => StorageError::NotFound(dir.to_string()),
                other => other,
            }
        });
        let entries = match entries {
            Err(StorageError::NotFound(_)) => Vec::new(),
            other => other?,
        };
        self.count(0, 0);
        let mut found: Vec<Object> = entries
            .into_iter()
            .filter(|e| !e.path().ends_with('/'))
            .map(|e| Object {
                name: e.path().trim_start_matches('/').to_string(),
                size: e.metadata().content_length(),
                regular: true,
                modified: e.metadata().last_modified().map(SystemTime::from),
            })
            .collect();
        if dir == "data" || dir == "index" {
            let mut sizes = self.sizes.lock().expect("sizes lock");
            sizes.extend(found.iter().map(|o| (o.name.clone(), o.size)));
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.put(name, bytes.to_vec())
    }

    fn write_new(&self, name: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        crash_point("put", Path::new(name));
        let options = WriteOptions { if_not_exists: true, ..Default::default() };
        let written = match self.client()?.operator.write_options(name, bytes.to_vec(), options) {
            Ok(_) => true,
            // A retried PUT whose first try went through finds its own object.
            Err(e) if e.kind() == ErrorKind::ConditionNotMatch => self.get(name, None).ok().as_deref() == Some(bytes),
            Err(e) => return Err(self.error("write", name, e)),
        };
        self.count(bytes.len(), 0);
        Ok(written)
    }

    fn rewrite_existing(&self, name: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        let client = self.client()?;
        let etag = match client.operator.stat(name) {
            Ok(meta) => meta.etag().map(str::to_string),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.error("look up", name, e)),
        };
        self.count(0, 0);
        crash_point("put", Path::new(name));
        // Written only over the version just seen: a removal in between is not undone.
        let options = WriteOptions { if_match: etag.clone(), ..Default::default() };
        let written = match client.operator.write_options(name, bytes.to_vec(), options) {
            Ok(_) => true,
            Err(e) if matches!(e.kind(), ErrorKind::ConditionNotMatch | ErrorKind::NotFound) => false,
            // A store without conditional writes: looked at a moment ago, written now.
            Err(e) if e.kind() == ErrorKind::Unsupported || etag.is_none() => {
                self.put(name, bytes.to_vec())?;
                return Ok(true);
            }
            Err(e) => return Err(self.error("write", name, e)),
        };
        self.count(bytes.len(), 0);
        Ok(written)
    }

    fn upload(&self) -> Result<Box<dyn Upload>, StorageError> {
        let file = tempfile::tempfile().map_err(super::io_error("making a temporary file for a pack (TMPDIR)"))?;
        Ok(Box::new(S3Upload { file: io::BufWriter::with_capacity(1 << 20, file), storage: self.0.clone() }))
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        crash_point("remove", Path::new(name));
        self.client()?.operator.delete(name).map_err(|e| self.error("delete", name, e))?;
        self.count(0, 0);
        Ok(())
    }

    fn set_aside(&self, name: &str, to: &str) -> Result<(), StorageError> {
        crash_point("rename", Path::new(name));
        self.client()?.operator.copy(name, to).map_err(|e| self.error("copy", name, e))?;
        self.count(0, 0);
        self.delete(name)
    }

    fn create(&self, create_bucket: bool) -> Result<(), StorageError> {
        if create_bucket {
            self.create_bucket()?;
        }
        // Lists one name: a missing bucket or refused credentials are said before anything else.
        let options = ListOptions { limit: Some(1), ..Default::default() };
        self.client()?.operator.list_options("", options).map_err(|e| self.error("list", "the bucket", e))?;
        self.count(0, 0);
        Ok(())
    }

    fn traffic(&self) -> Option<Traffic> {
        Some(Traffic {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        })
    }
}

/// A pack gathered in a nameless local temporary file (packs of several writers would
/// otherwise all sit in memory) and stored whole when complete: with one PUT, or, past
/// `MULTIPART_FROM`, in parts that the store joins into one object only at the end. An object
/// store has no partial objects either way.
struct S3Upload {
    file: io::BufWriter<std::fs::File>,
    storage: Arc<Shared>,
}

/// Packs from this size up are uploaded in parts of `PART` bytes.
const MULTIPART_FROM: u64 = 64 << 20;
const PART: usize = 16 << 20;

impl Write for S3Upload {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write(bytes)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Upload for S3Upload {
    fn waits_in(&self) -> Option<PathBuf> {
        Some(std::env::temp_dir())
    }

    fn finish(self: Box<Self>, name: &str) -> Result<(), StorageError> {
        let spooled = super::io_error("keeping a pack in a temporary file (TMPDIR)");
        let mut file = self.file.into_inner().map_err(|e| spooled(e.into_error()))?;
        let size =
            io::Seek::seek(&mut file, io::SeekFrom::End(0)).map_err(super::io_error("reading a spooled pack"))?;
        io::Seek::rewind(&mut file).map_err(super::io_error("reading a spooled pack"))?;
        let read_part = |file: &mut std::fs::File, len: usize| -> Result<Vec<u8>, StorageError> {
            let mut part = vec![0; len];
            io::Read::read_exact(file, &mut part).map_err(super::io_error("reading a spooled pack"))?;
            Ok(part)
        };
        if size < MULTIPART_FROM {
            return self.storage.put(name, read_part(&mut file, size as usize)?);
        }
        crash_point("put", Path::new(name));
        let failed = |e: opendal::Error| self.storage.error("write", name, e);
        let options = WriteOptions { chunk: Some(PART), ..Default::default() };
        let mut writer = self.storage.client()?.operator.writer_options(name, options).map_err(failed)?;
        let mut left = size;
        while left > 0 {
            let len = left.min(PART as u64);
            writer.write(read_part(&mut file, len as usize)?).map_err(failed)?;
            self.storage.count(len as usize, 0);
            left -= len;
        }
        writer.close().map_err(failed)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_to_endpoint_bucket_and_prefix() {
        let at = S3Location::parse("https://store.example:9000/phones/family/").unwrap();
        assert_eq!(at.endpoint, "https://store.example:9000");
        assert_eq!((at.bucket.as_str(), at.prefix.as_str()), ("phones", "family"));
        assert_eq!(at.to_string(), "s3:https://store.example:9000/phones/family");
        let bare = S3Location::parse("s3.amazonaws.com/my-bucket").unwrap();
        assert_eq!((bare.endpoint.as_str(), bare.prefix.as_str()), ("https://s3.amazonaws.com", ""));
        let v6 = S3Location::parse("http://[::1]:9000/bucket").unwrap();
        assert_eq!(v6.endpoint, "http://[::1]:9000");
        for bad in [
            "ftp://h/b",
            "https://h",
            "https://h/B!",
            "https:///bucket",
            "https://h/bucket/../x",
            "http://h:41334:9/bucket",
            "http://h:0/bucket",
            "http://h:99999/bucket",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
        let secret = S3Location::parse("https://AKIA:hunter2@h/bucket").unwrap_err().to_string();
        assert!(!secret.contains("hunter2") && secret.contains("AWS_ACCESS_KEY_ID"), "{secret}");
    }

    #[test]
    fn store_errors_are_said_by_code() {
        let text = r#"PermissionDenied (permanent) at read => S3Error { code: "SignatureDoesNotMatch", message: "The request signature we calculated does not match", resource: "/b/x" }"#;
        assert_eq!(s3_code(text), "SignatureDoesNotMatch: The request signature we calculated does not match");
    }
}
