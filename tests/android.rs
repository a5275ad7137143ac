//! Android archives as sources: tar files as phone tools make them (made here by GNU tar, the
//! real program, in each of its formats, and by hand where an archive must be hostile or
//! damaged) and Android backups (.ab), which this file writes itself from the documented
//! format (header lines, zlib, AES-256-CBC with PBKDF2-derived keys) with the RustCrypto crates
//! directly, not with phonebak's code. There is no phone here.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn assert_said(out: &std::process::Output, expected: i32, lines: &[&str]) {
    let said = stderr(out);
    assert_eq!(code(out), expected, "{said}");
    for line in lines {
        assert!(said.contains(line), "{line:?} is not said: {said}");
    }
}

fn snapshot_count(s: &Scratch) -> usize {
    s.json(&["snapshots"]).as_array().unwrap().len()
}

/// A phone's storage as `adb exec-out tar` or TWRP would pack it: photos, music, a hard link,
/// a symlink, an empty file, names that are not ASCII, a path longer than a ustar name field
/// (but within its prefix), a private file, a time with nanoseconds.
fn phone(root: &Path, very_long_name: bool) {
    let sd = root.join("sdcard");
    write(&sd.join("DCIM/Camera/IMG_0001.jpg"), &bytes(1, 1_500_000, false));
    write(&sd.join("Music/song.mp3"), &bytes(2, 200_000, false));
    std::fs::hard_link(sd.join("Music/song.mp3"), sd.join("Music/song again.mp3")).unwrap();
    write(&sd.join("empty.txt"), b"");
    write(&sd.join("Documents/\u{dc}ber \u{2713} caf\u{e9}.txt"), "gr\u{fc}\u{df}e".as_bytes());
    let deep = "Android/media/com.whatsapp/WhatsApp/Media/WhatsApp Images/Sent/2026/November";
    write(&sd.join(deep).join("IMG-20261121-WA0001.jpg"), &bytes(3, 30_000, false));
    if very_long_name {
        write(&sd.join("Download").join("n".repeat(180) + ".pdf"), &bytes(4, 10_000, true));
    }
    std::os::unix::fs::symlink("DCIM/Camera", sd.join("camera")).unwrap();
    std::fs::set_permissions(sd.join("Documents"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    set_mtime(&sd.join("DCIM/Camera/IMG_0001.jpg"), 1_700_000_000, 123_456_789);
    set_mtime(&sd.join("empty.txt"), 1_500_000_000, 0);
}

/// The tree as a tar keeps it: mtimes in whole seconds unless the format is PAX.
fn seconds_only(tree: std::collections::BTreeMap<PathBuf, Observed>) -> std::collections::BTreeMap<PathBuf, Observed> {
    tree.into_iter().map(|(p, o)| (p, o.in_whole_seconds())).collect()
}

fn gnu_tar(root: &Path, format: &str, out: &Path) {
    let status =
        Command::new("tar").args(["--format", format, "-C"]).arg(root).arg("-cf").arg(out).arg(".").status().unwrap();
    assert!(status.success(), "tar --format {format}");
}

#[test]
fn tars_of_every_format_give_back_the_phone_exactly() {
    for (format, exact_times, long_name) in [("ustar", false, false), ("gnu", false, true), ("posix", true, true)] {
        let s = Scratch::with_repo();
        let root = s.path("phone");
        phone(&root, long_name);
        let archive = s.path("phone.tar");
        gnu_tar(&root, format, &archive);
        let report = s.json(&["backup", "--device", "pixel", &format!("tar:{}", archive.display())]);
        assert_eq!(report["facts"]["kind"], "tar", "{report}");
        assert!(report["unreadable"].as_array().unwrap().is_empty(), "{format}: {report}");
        let out = s.path("out");
        s.ok(&["restore", "pixel/latest", "--target", out.to_str().unwrap()]);
        let (want, got) = (describe(&root), describe(&out));
        if exact_times {
            assert_eq!(got, want, "{format}");
        } else {
            assert_eq!(seconds_only(got), seconds_only(want), "{format}");
        }
        let check = s.run(&["check", "--read-data"]);
        assert_eq!(code(&check), 0, "{}", stderr(&check));
    }
}

#[test]
fn a_tar_from_standard_input_is_the_same_snapshot_and_costs_nothing_new() {
    let s = Scratch::with_repo();
    let root = s.path("phone");
    phone(&root, true);
    let archive = s.path("phone.tar");
    gnu_tar(&root, "posix", &archive);
    s.ok(&["backup", "--device", "pixel", &format!("tar:{}", archive.display())]);
    let mut child = s
        .command(&["backup", "--json", "--device", "pixel", "tar:-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&std::fs::read(&archive).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stats"]["new_bytes"], 0, "{report}");
    let roots: Vec<_> = s.json(&["snapshots"]).as_array().unwrap().iter().map(|i| i["root"].clone()).collect();
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[0], roots[1], "the same tree");
}

/// A tar written by hand: ustar headers, PAX records where asked.
#[derive(Default)]
struct Tar(Vec<u8>);

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{:0width$o}\0", value, width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}

fn ustar_header(name: &[u8], size: u64, flag: u8, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    seal(&mut h);
    h
}

fn seal(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

impl Tar {
    fn raw(&mut self, header: [u8; 512], data: &[u8]) -> &mut Tar {
        self.0.extend_from_slice(&header);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    fn file(&mut self, name: &[u8], data: &[u8]) -> &mut Tar {
        self.raw(ustar_header(name, data.len() as u64, b'0', b""), data)
    }
    fn dir(&mut self, name: &[u8]) -> &mut Tar {
        self.raw(ustar_header(name, 0, b'5', b""), b"")
    }
    fn symlink(&mut self, name: &[u8], target: &[u8]) -> &mut Tar {
        self.raw(ustar_header(name, 0, b'2', target), b"")
    }
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
        let mut body = Vec::new();
        for (key, value) in records {
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        self.raw(ustar_header(b"PaxHeader", body.len() as u64, b'x', b""), &body)
    }
    fn end(&mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0.clone()
    }
}

#[test]
fn hostile_names_are_refused_and_named_and_nothing_lands_outside() {
    let s = Scratch::with_repo();
    // Where the hostile entries point: a folder of this test's own, which must stay empty.
    let outside = s.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let absolute = outside.join("evil.txt");
    let archive = s.path("hostile.tar");
    let tar = Tar::default()
        .file(b"good.txt", b"kept")
        .file(b"../evil.txt", b"climbs")
        .file(absolute.as_os_str().as_encoded_bytes(), b"absolute")
        .file(b"sdcard/../../evil2.txt", b"climbs later")
        .pax(&[("path", b"nul\0name.txt")])
        .file(b"ignored-name", b"nul")
        .symlink(b"link", outside.as_os_str().as_encoded_bytes())
        .file(b"link/evil3.txt", b"through the symlink")
        .file(b"good.txt/inside", b"through a file")
        .end();
    std::fs::write(&archive, tar).unwrap();
    let out = s.run(&["backup", "--device", "p", &format!("tar:{}", archive.display())]);
    assert_said(
        &out,
        3,
        &[
            "../evil.txt: a path that climbs out with `..`: not stored",
            &format!("{}: an absolute path: not stored", absolute.display()),
            "sdcard/../../evil2.txt: a path that climbs out with `..`",
            "a name with a NUL byte: not stored",
            "link/evil3.txt: a path through the symlink link: not stored",
            "good.txt/inside: a path through the file good.txt: not stored",
        ],
    );
    let listed = s.ok(&["ls", "p/latest"]);
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["/good.txt", "/link"], "{listed}");
    let target = s.path("out/inner");
    s.ok(&["restore", "p/latest", "--target", target.to_str().unwrap()]);
    assert_eq!(names(&s.path("out")), ["inner"]);
    assert_eq!(names(&target), ["good.txt", "link"]);
    assert_eq!(names(&outside), Vec::<String>::new(), "nothing landed outside");
}

#[test]
fn damaged_tars_give_an_exact_error_and_no_snapshot() {
    let s = Scratch::with_repo();
    let good = Tar::default().file(b"a.txt", &bytes(1, 2000, true)).file(b"b.txt", &bytes(2, 3000, true)).end();
    let mut bad_sum = good.clone();
    bad_sum[512 * 5 + 3] ^= 0x20; // b.txt's header: a.txt's 2000 bytes are 4 blocks after its own
    let cut_in_data = good[..512 * 6 + 100].to_vec();
    let cut_at_entry = good[..512 * 5].to_vec();
    let mut huge = Tar::default();
    let mut header = ustar_header(b"huge.bin", 0, b'0', b"");
    header[124] = 0x80; // base-256: 2^62 bytes
    header[125..136].fill(0);
    header[128] = 0x40;
    seal(&mut header);
    let huge = huge.raw(header, &bytes(3, 5000, false)).end();
    let mut pax_bomb = Tar::default().file(b"a.txt", b"x").0.clone();
    pax_bomb.extend_from_slice(&ustar_header(b"PaxHeader", 1 << 30, b'x', b""));
    pax_bomb.extend_from_slice(&[b'9'; 4096]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad-sum", bad_sum, "the tar header at byte 2560 is damaged: bad checksum"),
        (
            "cut-in-data",
            cut_in_data,
            "the archive is cut short: it ends inside b.txt (2900 of its 3000 bytes are missing)",
        ),
        ("cut-at-entry", cut_at_entry, "at byte 2560 without the end-of-archive blocks"),
        ("huge", huge, "it ends inside huge.bin (4611686018427381760 of its 4611686018427387904 bytes are missing)"),
        ("pax-bomb", pax_bomb, "an extension header of 1073741824 bytes (at most 1048576)"),
        ("empty", Vec::new(), "at byte 0 without the end-of-archive blocks"),
    ];
    for (name, bytes, said) in cases {
        let path = s.path(&format!("{name}.tar"));
        std::fs::write(&path, bytes).unwrap();
        let out = s.run(&["backup", "--device", "p", &format!("tar:{}", path.display())]);
        assert_said(&out, 20, &[said]);
        assert_eq!(snapshot_count(&s), 0, "{name}");
    }
    assert_eq!(code(&s.run(&["check"])), 0);
}

#[test]
fn include_and_exclude_choose_from_an_archive() {
    let s = Scratch::with_repo();
    let root = s.path("phone");
    phone(&root, false);
    let archive = s.path("phone.tar");
    gnu_tar(&root, "posix", &archive);
    let spec = format!("tar:{}", archive.display());
    s.ok(&["backup", "--device", "a", "--exclude", "*.mp3", &spec]);
    let listed = s.ok(&["ls", "a/latest"]);
    assert!(!listed.contains(".mp3") && listed.contains("IMG_0001.jpg"), "{listed}");
    s.ok(&["backup", "--device", "b", "--include", "sdcard/Music", &spec]);
    let listed = s.ok(&["ls", "b/latest"]);
    let paths: Vec<&str> = listed.lines().collect();
    assert_eq!(
        paths,
        ["/sdcard", "/sdcard/Music", "/sdcard/Music/song again.mp3", "/sdcard/Music/song.mp3"],
        "{listed}"
    );
}

// ---- Android backups (.ab), written here from the documented format ----

const AB_ROUNDS: u32 = 10_000;

fn pbkdf2_sha1(secret: &[u8], salt: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(secret, salt, AB_ROUNDS, &mut key);
    key
}

fn cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], data: &[u8]) -> Vec<u8> {
    use aes::cipher::{BlockEncryptMut, KeyIvInit};
    let pad = 16 - data.len() % 16;
    let mut out = [data, &vec![pad as u8; pad]].concat();
    let mut cipher = cbc::Encryptor::<aes::Aes256>::new(key.into(), iv.into());
    for block in out.chunks_exact_mut(16) {
        cipher.encrypt_block_mut(block.into());
    }
    out
}

/// Java's `(char) b` sign-extends: from version 2 the checksum's PBKDF2 gets UTF-8 of that.
fn java_chars(bytes: &[u8], version: u32) -> Vec<u8> {
    if version == 1 {
        return bytes.to_vec();
    }
    let text: String = bytes.iter().map(|&b| char::from_u32(b as i8 as i16 as u16 as u32).unwrap()).collect();
    text.into_bytes()
}

fn ab(tar: &[u8], version: u32, compressed: bool, password: Option<&str>) -> Vec<u8> {
    let mut data = tar.to_vec();
    if compressed {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        data = z.finish().unwrap();
    }
    let mut out = format!("ANDROID BACKUP\n{version}\n{}\n", compressed as u8).into_bytes();
    match password {
        None => out.extend_from_slice(b"none\n"),
        Some(password) => {
            let (user_salt, ck_salt): ([u8; 64], [u8; 64]) = (rand_bytes(), rand_bytes());
            let (user_iv, master_iv, master_key): ([u8; 16], [u8; 16], [u8; 32]) =
                (rand_bytes(), rand_bytes(), rand_bytes());
            let password_bytes: Vec<u8> = if version == 1 {
                password.encode_utf16().map(|u| u as u8).collect()
            } else {
                password.as_bytes().to_vec()
            };
            let user_key = pbkdf2_sha1(&password_bytes, &user_salt);
            let check = pbkdf2_sha1(&java_chars(&master_key, version), &ck_salt);
            let blob = [&[16u8][..], &master_iv, &[32], &master_key, &[32], &check].concat();
            let sealed = cbc_encrypt(&user_key, &user_iv, &blob);
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
            out.extend_from_slice(
                format!(
                    "AES-256\n{}\n{}\n{AB_ROUNDS}\n{}\n{}\n",
                    hex(&user_salt),
                    hex(&ck_salt),
                    hex(&user_iv),
                    hex(&sealed)
                )
                .as_bytes(),
            );
            data = cbc_encrypt(&master_key, &master_iv, &data);
        }
    }
    out.extend_from_slice(&data);
    out
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    out.copy_from_slice(&bytes(seed, N, false));
    out
}

/// What `adb backup -apk -shared` writes inside: an app's manifest first, its files by domain,
/// then shared storage.
fn app_backup_tar() -> Vec<u8> {
    Tar::default()
        .file(b"apps/com.example.notes/_manifest", b"1\ncom.example.notes\n42\n33\n0\n0\n")
        .dir(b"apps/com.example.notes/f")
        .file(b"apps/com.example.notes/f/notes.json", &bytes(5, 40_000, true))
        .file(b"apps/com.example.notes/db/notes.db", &bytes(6, 70_000, false))
        .file(b"apps/com.example.notes/sp/prefs.xml", b"<map><int name=\"n\" value=\"3\" /></map>")
        .file(b"shared/0/DCIM/Camera/IMG_0001.jpg", &bytes(7, 300_000, false))
        .end()
}

#[test]
fn android_backups_of_every_version_compressed_or_not_encrypted_or_not_import_exactly() {
    let s = Scratch::with_repo();
    let tar = app_backup_tar();
    let expected = s.path("expected");
    gnu_untar(&tar, &expected);
    let password = "p\u{e4}ssw\u{f6}rd"; // not ASCII: version 1 and later versions differ
    for version in 1..=5 {
        for compressed in [false, true] {
            for encrypted in [false, true] {
                let name = format!("v{version}-{compressed}-{encrypted}");
                let path = s.path(&format!("{name}.ab"));
                std::fs::write(&path, ab(&tar, version, compressed, encrypted.then_some(password))).unwrap();
                let report = s
                    .command(&["backup", "--json", "--device", &name, &format!("ab:{}", path.display())])
                    .env("PHONEBAK_ARCHIVE_PASSWORD", password)
                    .output()
                    .unwrap();
                assert_eq!(code(&report), 0, "{name}: {}", stderr(&report));
                let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
                assert_eq!(report["facts"]["ab-version"], version.to_string(), "{report}");
                assert_eq!(report["facts"]["encrypted"], encrypted.to_string());
                let out = s.path(&format!("out-{name}"));
                s.ok(&["restore", &format!("{name}/latest"), "--target", out.to_str().unwrap()]);
                assert_eq!(contents(&out), contents(&expected), "{name}");
            }
        }
    }
}

fn contents(root: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|p| (p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn a_wrong_or_missing_ab_password_stores_nothing() {
    let s = Scratch::with_repo();
    let path = s.path("locked.ab");
    std::fs::write(&path, ab(&app_backup_tar(), 5, true, Some("right"))).unwrap();
    let spec = format!("ab:{}", path.display());
    let wrong =
        s.command(&["backup", "--device", "p", &spec]).env("PHONEBAK_ARCHIVE_PASSWORD", "wrong").output().unwrap();
    assert_said(&wrong, 19, &["the password does not open this Android backup"]);
    let missing = s.command(&["backup", "--device", "p", &spec]).stdin(Stdio::null()).output().unwrap();
    assert_said(&missing, 19, &["this Android backup is encrypted: give its password with --archive-password-file"]);
    let file = s.path("pw");
    std::fs::write(&file, "right\n").unwrap();
    s.ok(&["backup", "--device", "p", "--archive-password-file", file.to_str().unwrap(), &spec]);
    assert_eq!(snapshot_count(&s), 1);
}

#[test]
fn damaged_android_backups_give_an_exact_error_and_no_snapshot() {
    let s = Scratch::with_repo();
    let tar = app_backup_tar();
    let plain = ab(&tar, 5, true, None);
    let header_len = b"ANDROID BACKUP\n5\n1\nnone\n".len();
    let mut bad_zlib = plain.clone();
    for b in &mut bad_zlib[header_len + 10..header_len + 40] {
        *b ^= 0x5a;
    }
    let encrypted = ab(&tar, 5, false, Some("pw"));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", b"ANDROID BACKUQ\n5\n1\nnone\n".to_vec(), "not an Android backup (.ab)"),
        ("version", b"ANDROID BACKUP\nfive\n1\nnone\n".to_vec(), "its version \"five\" is not a number"),
        (
            "newer",
            b"ANDROID BACKUP\n9\n1\nnone\n".to_vec(),
            "it is version 9 of the format; phonebak reads versions 1 to 5",
        ),
        ("flag", b"ANDROID BACKUP\n5\n2\nnone\n".to_vec(), "its compression flag is \"2\", not 0 or 1"),
        ("cipher", b"ANDROID BACKUP\n5\n1\nROT13\n".to_vec(), "an unknown encryption \"ROT13\""),
        ("header-cut", b"ANDROID BACKUP\n5\n1".to_vec(), "it ends before its compression line"),
        ("zlib", bad_zlib, "the archive's data is damaged"),
        ("zlib-cut", plain[..plain.len() / 2].to_vec(), "the archive is cut short"),
        (
            "cipher-cut",
            encrypted[..encrypted.len() - 5000].to_vec(),
            "its encrypted length is not a whole number of 16-byte blocks",
        ),
        ("cipher-cut-at-block", encrypted[..encrypted.len() - 4096].to_vec(), "the archive is cut short"),
        // Cut by exactly its padding block, and bytes after the compressed stream.
        ("padding-gone", encrypted[..encrypted.len() - 16].to_vec(), "padding is missing or damaged"),
        ("trailing", [plain.as_slice(), b"garbage"].concat(), "data after the end of its compressed stream"),
    ];
    for (name, bytes, said) in cases {
        let path = s.path(&format!("{name}.ab"));
        std::fs::write(&path, bytes).unwrap();
        let out = s
            .command(&["backup", "--device", "p", &format!("ab:{}", path.display())])
            .env("PHONEBAK_ARCHIVE_PASSWORD", "pw")
            .output()
            .unwrap();
        assert_said(&out, 20, &[said]);
        assert_eq!(snapshot_count(&s), 0, "{name}");
    }
}

#[test]
fn an_android_backup_from_standard_input() {
    let s = Scratch::with_repo();
    let mut child = s
        .command(&["backup", "--device", "p", "ab:-"])
        .env("PHONEBAK_ARCHIVE_PASSWORD", "pw")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&ab(&app_backup_tar(), 4, true, Some("pw"))).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed = s.ok(&["ls", "p/latest"]);
    assert!(listed.contains("/apps/com.example.notes/_manifest"), "{listed}");
}

// ---- A live phone over adb: tests/fake-adb/adb stands in for adb on a local folder (there is
// no phone here); its shell runs this machine's find, stat and tar as a phone's toybox would.

struct FakePhone {
    root: PathBuf,
    path: String,
}

impl FakePhone {
    fn new(s: &Scratch) -> FakePhone {
        let root = s.path("phone");
        std::fs::create_dir_all(root.join("sdcard")).unwrap();
        let path = format!("{}/tests/fake-adb:{}", env!("CARGO_MANIFEST_DIR"), std::env::var("PATH").unwrap());
        FakePhone { root, path }
    }

    fn sdcard(&self) -> PathBuf {
        self.root.join("sdcard")
    }

    fn backup(&self, s: &Scratch, spec: &str) -> std::process::Output {
        let _ = std::fs::remove_file(self.root.join(".adb-calls"));
        let _ = std::fs::remove_file(self.root.join(".adb-bytes"));
        s.command(&["backup", "--json", "--device", "pixel", spec])
            .env("PATH", &self.path)
            .env("FAKE_ADB_ROOT", &self.root)
            .output()
            .unwrap()
    }

    /// How many times adb ran, and the bytes its streams carried, in the last backup.
    fn traffic(&self) -> (usize, u64) {
        let calls = std::fs::read_to_string(self.root.join(".adb-calls")).unwrap_or_default().lines().count();
        let bytes = std::fs::read_to_string(self.root.join(".adb-bytes"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse::<u64>().unwrap())
            .sum();
        (calls, bytes)
    }
}

#[test]
fn a_live_phone_is_backed_up_in_a_few_adb_calls_and_the_next_day_moves_only_what_changed() {
    let s = Scratch::with_repo();
    let phone = FakePhone::new(&s);
    let sd = phone.sdcard();
    for i in 0..20_000u64 {
        write(
            &sd.join(format!("Android/media/com.app/cache/{}/{i}.json", i % 100)),
            format!("{{\"n\":{i}}}").as_bytes(),
        );
    }
    write(&sd.join("DCIM/Camera/VID_0001.mp4"), &bytes(1, 6_000_000, false));
    write(&sd.join("DCIM/Camera/IMG_0001.jpg"), &bytes(2, 2_000_000, false));
    std::os::unix::fs::symlink("DCIM/Camera", sd.join("camera")).unwrap();
    let first = phone.backup(&s, "adb");
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let (calls, _) = phone.traffic();
    assert!(calls <= 4, "{calls} adb calls for 20 002 files");
    let out = s.path("out");
    s.ok(&["restore", "pixel/latest", "--target", out.to_str().unwrap()]);
    assert_eq!(seconds_only(describe(&out)), seconds_only(describe(&sd)));

    // The next day: 1% of the small files changed, one photo added.
    let mut changed_bytes = 0;
    for i in (0..20_000u64).step_by(100) {
        let text = format!("{{\"n\":{i},\"changed\":true}}");
        changed_bytes += text.len() as u64;
        let path = sd.join(format!("Android/media/com.app/cache/{}/{i}.json", i % 100));
        write(&path, text.as_bytes());
        set_mtime(&path, 1_800_000_000, 0);
    }
    write(&sd.join("DCIM/Camera/IMG_0002.jpg"), &bytes(3, 500_000, false));
    changed_bytes += 500_000;
    let next = phone.backup(&s, "adb");
    assert_eq!(code(&next), 0, "{}", stderr(&next));
    let (calls, moved) = phone.traffic();
    assert!(calls <= 4, "{calls} adb calls");
    // Each file costs its tar header (512 bytes) and padding; a symlink one header.
    let bound = changed_bytes + 201 * 1024 + 10240 + 1024;
    assert!(moved <= bound, "{moved} bytes moved for {changed_bytes} changed (bound {bound})");
    let out2 = s.path("out2");
    s.ok(&["restore", "pixel/latest", "--target", out2.to_str().unwrap()]);
    assert_eq!(seconds_only(describe(&out2)), seconds_only(describe(&sd)));
    assert!(std::fs::read_dir(phone.root.join("data/local/tmp")).unwrap().next().is_none(), "the list is removed");
}

#[test]
fn a_phone_unplugged_mid_backup_leaves_no_snapshot_and_the_next_run_completes() {
    let s = Scratch::with_repo();
    let phone = FakePhone::new(&s);
    write(&phone.sdcard().join("DCIM/a.jpg"), &bytes(1, 3_000_000, false));
    write(&phone.sdcard().join("DCIM/b.jpg"), &bytes(2, 3_000_000, false));
    std::fs::write(phone.root.join(".unplug-after-bytes"), "1000000").unwrap();
    let out = phone.backup(&s, "adb");
    assert_said(&out, 16, &["the source adb:/sdcard disappeared during the backup", "the archive is cut short"]);
    assert_eq!(snapshot_count(&s), 0);
    assert_eq!(code(&s.run(&["check"])), 0);
    std::fs::remove_file(phone.root.join(".unplug-after-bytes")).unwrap();
    std::fs::remove_file(phone.root.join(".unplugged")).unwrap();
    let again = phone.backup(&s, "adb");
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert_eq!(snapshot_count(&s), 1);
}

#[test]
fn which_phone_adb_missing_and_tools_missing_are_said() {
    let s = Scratch::with_repo();
    let phone = FakePhone::new(&s);
    write(&phone.sdcard().join("a.txt"), b"a");
    let several = s
        .command(&["backup", "--device", "p", "adb"])
        .env("PATH", &phone.path)
        .env("FAKE_ADB_ROOT", &phone.root)
        .env("FAKE_ADB_OTHER_SERIALS", "R5CT10 emulator-5554")
        .output()
        .unwrap();
    assert_said(
        &several,
        17,
        &["3 phones are connected", "FAKE0001 (device), R5CT10 (device), emulator-5554 (device)"],
    );
    let named = s
        .command(&["backup", "--device", "p", "adb:FAKE0001:/sdcard"])
        .env("PATH", &phone.path)
        .env("FAKE_ADB_ROOT", &phone.root)
        .env("FAKE_ADB_OTHER_SERIALS", "R5CT10 emulator-5554")
        .output()
        .unwrap();
    assert_eq!(code(&named), 0, "{}", stderr(&named));
    let no_adb = s.command(&["backup", "--device", "p", "adb"]).env("PATH", "/nonexistent").output().unwrap();
    assert_said(&no_adb, 17, &["the `adb` program is not installed: install Android's platform tools"]);
    // A phone whose shell has no tar: this machine's tools, but for tar.
    let bin = s.path("bin-without-tar");
    std::fs::create_dir_all(&bin).unwrap();
    for dir in ["/usr/bin", "/bin"] {
        for tool in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()) {
            if tool.file_name() != "tar" && !bin.join(tool.file_name()).exists() {
                std::os::unix::fs::symlink(tool.path(), bin.join(tool.file_name())).unwrap();
            }
        }
    }
    let no_tar = s
        .command(&["backup", "--device", "p", "adb"])
        .env("PATH", format!("{}/tests/fake-adb:{}", env!("CARGO_MANIFEST_DIR"), bin.display()))
        .env("FAKE_ADB_ROOT", &phone.root)
        .output()
        .unwrap();
    assert_said(&no_tar, 17, &["the phone's shell has no `tar` (toybox or busybox provides them)"]);
    let no_folder = phone.backup(&s, "adb:/sdcard/nothing");
    assert_said(&no_folder, 17, &["the phone has no folder /sdcard/nothing"]);
}

#[test]
fn odd_names_on_a_phone_are_taken_or_said() {
    let s = Scratch::with_repo();
    let phone = FakePhone::new(&s);
    let sd = phone.sdcard();
    write(&sd.join("it's \"quoted\" $(touch pwned).txt"), b"quotes");
    write(&sd.join("-rf"), b"dash");
    write(&sd.join("line\nbreak.txt"), b"newline");
    let out = phone.backup(&s, "adb");
    assert_said(&out, 3, &["line\nbreak.txt: a name with a line break, which the phone's tar cannot be asked for"]);
    let listed = s.ok(&["ls", "pixel/latest"]);
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["/-rf", "/it's \"quoted\" $(touch pwned).txt"], "{listed}");
    assert!(!phone.root.join("pwned").exists() && !sd.join("pwned").exists());
}

/// Extracts a tar stream with GNU tar into the new folder `into`.
fn gnu_untar(archive: &[u8], into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let mut untar = Command::new("tar").arg("-xf").arg("-").arg("-C").arg(into).stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = untar.stdin.take().unwrap();
    let data = archive.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    assert!(untar.wait().unwrap().success(), "GNU tar extracts it");
    feeder
        .join()
        .unwrap()
        .or_else(|e| if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) })
        .unwrap();
}

/// The entries of a tar stream, in order, as GNU tar lists them.
fn tar_listing(archive: &[u8]) -> Vec<String> {
    let mut child =
        Command::new("tar").args(["-tf", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = archive.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    // GNU tar stops at the end-of-archive blocks: the padding after them may go unread.
    feeder
        .join()
        .unwrap()
        .or_else(|e| if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) })
        .unwrap();
    assert!(out.status.success(), "GNU tar lists it");
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// The tar stream inside an unencrypted .ab phonebak wrote: its header is version 5,
/// compressed, not encrypted.
fn ab_inner_tar(ab: &[u8]) -> Vec<u8> {
    let header = b"ANDROID BACKUP\n5\n1\nnone\n";
    assert_eq!(&ab[..header.len()], header, "{:?}", String::from_utf8_lossy(&ab[..40]));
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&ab[header.len()..]), &mut tar).unwrap();
    tar
}

fn root_of(s: &Scratch, device: &str) -> serde_json::Value {
    let list = s.json(&["snapshots", "--device", device]);
    list.as_array().unwrap().last().unwrap()["root"].clone()
}

#[test]
fn an_imported_tar_exports_byte_for_byte_and_imports_again_to_the_same_tree() {
    for format in ["ustar", "gnu", "posix"] {
        let s = Scratch::with_repo();
        let root = s.path("phone");
        phone(&root, format != "ustar");
        let archive = s.path("phone.tar");
        gnu_tar(&root, format, &archive);
        s.ok(&["backup", "--device", "pixel", &format!("tar:{}", archive.display())]);
        let exported = s.path("exported.tar");
        s.ok(&["export", "pixel/latest", "--format", "tar", exported.to_str().unwrap()]);
        let (original, again) = (std::fs::read(&archive).unwrap(), std::fs::read(&exported).unwrap());
        assert!(original == again, "{format}: the export is not the imported archive byte for byte");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&exported).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the export is private");
        // Standard output gives the same bytes.
        let out = s.command(&["export", "pixel/latest", "--format", "tar", "-"]).output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(out.stdout == original, "{format}: standard output differs");
        // Imported again: the same tree.
        s.ok(&["backup", "--device", "again", &format!("tar:{}", exported.display())]);
        assert_eq!(root_of(&s, "pixel"), root_of(&s, "again"), "{format}");
        // A folder of it: its entries only, in the archive's order, with their own headers.
        let part = s.command(&["export", "pixel/latest:sdcard/Music", "--format", "tar", "-"]).output().unwrap();
        assert_eq!(code(&part), 0, "{}", stderr(&part));
        let listed = tar_listing(&part.stdout);
        let want: Vec<String> = tar_listing(&original)
            .into_iter()
            .filter(|n| n.trim_start_matches("./").starts_with("sdcard/Music"))
            .collect();
        assert_eq!(listed, want, "{format}");
        assert!(listed.len() >= 3, "{listed:?}");
    }
}

#[test]
fn the_layout_outlives_prune_and_check_sees_it() {
    let s = Scratch::with_repo();
    let root = s.path("phone");
    phone(&root, true);
    let archive = s.path("phone.tar");
    gnu_tar(&root, "posix", &archive);
    s.ok(&["backup", "--device", "pixel", &format!("tar:{}", archive.display())]);
    let other = s.path("other");
    write(&other.join("a.txt"), b"another phone");
    s.ok(&["backup", "--device", "other", other.to_str().unwrap()]);
    s.ok(&["forget", "--device", "other", "--keep-last", "1", "--prune"]);
    s.ok(&["prune"]);
    let check = s.run(&["check", "--read-data"]);
    assert_eq!(code(&check), 0, "{}", stderr(&check));
    let exported = s.path("exported.tar");
    s.ok(&["export", "pixel/latest", "--format", "tar", exported.to_str().unwrap()]);
    assert!(std::fs::read(&exported).unwrap() == std::fs::read(&archive).unwrap(), "the layout survived the prune");
}

#[test]
fn an_android_backup_exports_as_the_tar_inside_and_as_an_ab_that_imports_again() {
    let s = Scratch::with_repo();
    let tar = app_backup_tar();
    let password = "p\u{e4}ssw\u{f6}rd";
    let imported = s.path("phone.ab");
    std::fs::write(&imported, ab(&tar, 5, true, Some(password))).unwrap();
    let out = s
        .command(&["backup", "--device", "pixel", &format!("ab:{}", imported.display())])
        .env("PHONEBAK_ARCHIVE_PASSWORD", password)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The tar inside, byte for byte.
    let inner = s.command(&["export", "pixel/latest", "--format", "tar", "-"]).output().unwrap();
    assert!(inner.stdout == tar, "the tar inside the .ab comes back byte for byte");
    // An unencrypted .ab: zlib over the same tar.
    let plain = s.path("plain.ab");
    s.ok(&["export", "pixel/latest", "--format", "ab", plain.to_str().unwrap()]);
    assert!(ab_inner_tar(&std::fs::read(&plain).unwrap()) == tar);
    // An encrypted one, with its own password: phonebak imports it again to the same tree.
    std::fs::write(s.path("new-password"), "n\u{e9}w secret\n").unwrap();
    let sealed = s.path("sealed.ab");
    let pw = s.path("new-password");
    s.ok(&[
        "export",
        "pixel/latest",
        "--format",
        "ab",
        "--archive-password-file",
        pw.to_str().unwrap(),
        sealed.to_str().unwrap(),
    ]);
    let head = std::fs::read(&sealed).unwrap();
    assert!(head.starts_with(b"ANDROID BACKUP\n5\n1\nAES-256\n"), "{:?}", String::from_utf8_lossy(&head[..40]));
    let wrong = s
        .command(&["backup", "--device", "again", &format!("ab:{}", sealed.display())])
        .env("PHONEBAK_ARCHIVE_PASSWORD", password)
        .output()
        .unwrap();
    assert_said(&wrong, 19, &["password does not open this Android backup"]);
    let again = s
        .command(&["backup", "--device", "again", &format!("ab:{}", sealed.display())])
        .env("PHONEBAK_ARCHIVE_PASSWORD", "n\u{e9}w secret")
        .output()
        .unwrap();
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert_eq!(root_of(&s, "pixel"), root_of(&s, "again"));
    // One app alone, as `adb restore` takes it.
    let app = s.command(&["export", "pixel/latest:apps/com.example.notes", "--format", "ab", "-"]).output().unwrap();
    assert_eq!(code(&app), 0, "{}", stderr(&app));
    let listed = tar_listing(&ab_inner_tar(&app.stdout));
    assert_eq!(listed.first().map(String::as_str), Some("apps/com.example.notes/_manifest"), "{listed:?}");
    assert!(listed.iter().all(|n| n.starts_with("apps/com.example.notes/")), "{listed:?}");
}

#[test]
fn a_folder_snapshot_exports_as_a_tar_gnu_tar_extracts_exactly_and_as_an_ab_manifests_first() {
    let s = Scratch::with_repo();
    let root = s.path("phone");
    phone(&root, true);
    let apps = root.join("apps");
    for app in ["com.b.app", "com.a.app"] {
        write(&apps.join(app).join("db/x.db"), &bytes(8, 5_000, true));
        write(&apps.join(app).join("a/base.apk"), &bytes(9, 9_000, false));
        write(&apps.join(app).join("f/notes.txt"), b"notes");
        write(&apps.join(app).join("_manifest"), format!("1\n{app}\n").as_bytes());
    }
    write(&apps.join("com.android.sharedstoragebackup/_manifest"), b"1\ncom.android.sharedstoragebackup\n");
    write(&root.join("shared/0/DCIM/a.jpg"), &bytes(10, 20_000, false));
    set_mtime(&root.join("shared/0/DCIM/a.jpg"), -86_400, 500);
    s.ok(&["backup", "--device", "pixel", root.to_str().unwrap()]);

    let tar = s.path("phone.tar");
    s.ok(&["export", "pixel/latest", "--format", "tar", tar.to_str().unwrap()]);
    let out = s.path("extracted");
    std::fs::create_dir(&out).unwrap();
    let status = Command::new("tar").arg("-xpf").arg(&tar).arg("-C").arg(&out).status().unwrap();
    assert!(status.success());
    assert_same_tree(&root, &out);

    let ab = s.command(&["export", "pixel/latest", "--format", "ab", "-"]).output().unwrap();
    assert_eq!(code(&ab), 0, "{}", stderr(&ab));
    let listed = tar_listing(&ab_inner_tar(&ab.stdout));
    for app in ["com.a.app", "com.b.app"] {
        let first = listed.iter().position(|n| n.starts_with(&format!("apps/{app}/"))).unwrap();
        assert_eq!(listed[first], format!("apps/{app}/_manifest"), "{listed:?}");
        let order: Vec<&str> = listed
            .iter()
            .filter_map(|n| n.strip_prefix(&format!("apps/{app}/")))
            .map(|rest| rest.split('/').next().unwrap())
            .collect();
        let mut domains = order.clone();
        domains.dedup();
        assert_eq!(domains, ["_manifest", "a", "f", "db"], "Android's order: {listed:?}");
    }
    let manifest = listed.iter().position(|n| n == "apps/com.android.sharedstoragebackup/_manifest").unwrap();
    assert!(listed[manifest + 1].starts_with("shared"), "shared storage follows its package: {listed:?}");
}

#[test]
fn an_export_never_replaces_a_file_never_leaves_half_of_one_and_says_why() {
    let s = Scratch::with_repo();
    let root = s.path("phone");
    write(&root.join("big.bin"), &bytes(11, 3_000_000, false));
    s.ok(&["backup", "--device", "pixel", root.to_str().unwrap()]);
    let existing = s.path("existing.tar");
    std::fs::write(&existing, b"mine").unwrap();
    let out = s.run(&["export", "pixel/latest", "--format", "tar", existing.to_str().unwrap()]);
    assert_said(&out, 18, &["already exists: phonebak never replaces a file"]);
    assert_eq!(std::fs::read(&existing).unwrap(), b"mine");
    let pw = s.path("pw");
    std::fs::write(&pw, "x").unwrap();
    let out =
        s.run(&["export", "pixel/latest", "--format", "tar", "--archive-password-file", pw.to_str().unwrap(), "-"]);
    assert_said(&out, 2, &["a tar is never encrypted"]);
    let out = s.run(&["export", "pixel/latest:nothing/here", "--format", "tar", "-"]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("nothing/here"), "{}", stderr(&out));
    // A disk that fills: exit 15, and nothing of the archive is left there.
    let disk = SmallDisk::mount(&s.path("small"), "1M");
    let target = disk.0.join("phone.tar");
    let out = s.run(&["export", "pixel/latest", "--format", "tar", target.to_str().unwrap()]);
    assert_said(&out, 15, &["No space left on device"]);
    assert_eq!(names(&disk.0), Vec::<String>::new(), "no half-written archive, no temporary file");
    // A reader that stops early: a clear error of its own, no panic.
    let mut child = s
        .command(&["export", "pixel/latest", "--format", "tar", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 512];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_said(&out, 18, &["standard output: Broken pipe"]);
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn metadata_only_files_are_listed_never_given_back_and_shown_in_the_mount() {
    let s = Scratch::with_repo();
    let root = s.path("phone");
    write(&root.join("Music/Album/01 song.mp3"), &bytes(12, 400_000, false));
    write(&root.join("Music/Album/02 song.mp3"), &bytes(13, 300_000, false));
    write(&root.join("Music/cover.jpg"), &bytes(14, 20_000, false));
    write(&root.join("DCIM/IMG_1.jpg"), &bytes(15, 50_000, false));
    set_mtime(&root.join("Music/Album/01 song.mp3"), 1_600_000_000, 0);
    let report = s.json(&["backup", "--device", "pixel", "--metadata-only", "*.mp3", root.to_str().unwrap()]);
    assert_eq!(report["stats"]["omitted"], 2, "{report}");
    assert_eq!(report["stats"]["omitted_bytes"], 700_000, "{report}");
    assert!(report["stats"]["new_bytes"].as_u64().unwrap() < 100_000, "no mp3 was read: {report}");

    let listed = s.json(&["ls", "pixel/latest", "--omitted"]);
    let paths: Vec<&str> = listed.as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["Music/Album/01 song.mp3", "Music/Album/02 song.mp3"]);
    assert_eq!(listed[0]["size"], 400_000);
    assert_eq!(listed[0]["mtime_sec"], 1_600_000_000);
    let text = s.ok(&["ls", "pixel/latest", "Music/Album", "--omitted"]);
    assert!(text.contains("400000") && text.contains("/Music/Album/01 song.mp3"), "{text}");
    let plain_ls = s.ok(&["ls", "pixel/latest"]);
    assert!(!plain_ls.contains(".mp3"), "{plain_ls}");

    // Never a fake or empty file: not restored, not exported, not in the mount's folders.
    let out = s.path("restored");
    s.ok(&["restore", "pixel/latest", "--target", out.to_str().unwrap()]);
    assert!(files_under(&out).iter().all(|p| p.extension().is_none_or(|e| e != "mp3")));
    assert!(out.join("Music/cover.jpg").exists());
    let tar = s.command(&["export", "pixel/latest", "--format", "tar", "-"]).output().unwrap();
    assert_said(&tar, 0, &["2 files recorded without content"]);
    assert!(tar_listing(&tar.stdout).iter().all(|n| !n.ends_with(".mp3")));
    let device = s.path("new-phone");
    std::fs::create_dir(&device).unwrap();
    s.ok(&["push", "--device", &format!("dir:{}", device.display()), "--from", "pixel/latest"]);
    assert!(device.join("DCIM/IMG_1.jpg").exists());
    assert!(files_under(&device).iter().all(|p| p.extension().is_none_or(|e| e != "mp3")), "nothing fake pushed");

    let mount = Mounted::new(&s, &[]);
    let device = mount.snapshots().join("pixel");
    let snapshot = names(&device).into_iter().find(|n| n != "latest" && !n.ends_with(".omitted.txt")).unwrap();
    assert_eq!(names(&device), [snapshot.clone(), format!("{snapshot}.omitted.txt"), "latest".into()]);
    let listing = std::fs::read_to_string(device.join(format!("{snapshot}.omitted.txt"))).unwrap();
    assert!(listing.contains("/Music/Album/02 song.mp3") && listing.contains("300000"), "{listing}");
    assert_eq!(names(&device.join(&snapshot).join("Music/Album")), Vec::<String>::new());
    let found = Command::new("find").arg(device.join(&snapshot)).arg("-name").arg("*.mp3").output().unwrap();
    assert!(found.status.success() && found.stdout.is_empty(), "{}", String::from_utf8_lossy(&found.stdout));
    drop(mount);

    // The list outlives a prune; check reads it.
    let check = s.run(&["check", "--read-data"]);
    assert_eq!(code(&check), 0, "{}", stderr(&check));
    s.ok(&["prune"]);
    assert_eq!(s.json(&["ls", "pixel/latest", "--omitted"]).as_array().unwrap().len(), 2);
}

#[test]
fn metadata_only_in_an_archive_and_on_a_live_phone_moves_no_content() {
    let s = Scratch::with_repo();
    let root = s.path("archived");
    phone(&root, true);
    let archive = s.path("phone.tar");
    gnu_tar(&root, "posix", &archive);
    s.ok(&["backup", "--device", "pixel", "--metadata-only", "Music", &format!("tar:{}", archive.display())]);
    let listed = s.json(&["ls", "pixel/latest", "--omitted"]);
    let paths: Vec<&str> = listed.as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["sdcard/Music/song.mp3", "sdcard/Music/song again.mp3"], "a hard link to one is one too");
    // The export gives back every other entry with its own bytes, and says what it cannot.
    let tar = s.command(&["export", "pixel/latest", "--format", "tar", "-"]).output().unwrap();
    assert_said(&tar, 0, &["2 files recorded without content"]);
    let entries = tar_listing(&tar.stdout);
    assert!(!entries.iter().any(|n| n.contains("song")), "{entries:?}");
    assert!(entries.iter().any(|n| n.ends_with("IMG_0001.jpg")));

    let phone = FakePhone::new(&s);
    write(&phone.sdcard().join("Music/big.mp3"), &bytes(16, 2_000_000, false));
    write(&phone.sdcard().join("DCIM/a.jpg"), &bytes(17, 10_000, false));
    let out = s
        .command(&["backup", "--json", "--device", "live", "--metadata-only", "*.mp3", "adb:"])
        .env("PATH", &phone.path)
        .env("FAKE_ADB_ROOT", &phone.root)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (_, moved) = phone.traffic();
    assert!(moved < 100_000, "the mp3 never crossed the cable: {moved} bytes");
    let listed = s.json(&["ls", "live/latest", "--omitted"]);
    assert_eq!(listed[0]["path"], "Music/big.mp3");
    assert_eq!(listed[0]["size"], 2_000_000);
}

#[test]
fn an_archive_with_a_name_twice_exports_what_the_snapshot_holds_and_names_the_rest() {
    let s = Scratch::with_repo();
    let tar = Tar::default().file(b"notes.txt", b"first").file(b"other.txt", b"x").file(b"notes.txt", b"later").end();
    let archive = s.path("twice.tar");
    std::fs::write(&archive, &tar).unwrap();
    let out = s.run(&["backup", "--device", "pixel", &format!("tar:{}", archive.display())]);
    assert_said(&out, 0, &["notes.txt: sent again: the last one is kept"]);
    let exported = s.command(&["export", "pixel/latest", "--format", "tar", "-"]).output().unwrap();
    assert_said(&exported, 3, &["notes.txt: the archive has it again further on"]);
    assert_eq!(tar_listing(&exported.stdout), ["other.txt", "notes.txt"]);
    let back = s.path("back");
    gnu_untar(&exported.stdout, &back);
    assert_eq!(std::fs::read(back.join("notes.txt")).unwrap(), b"later");
}

#[test]
fn an_export_killed_before_it_is_named_leaves_nothing_and_its_leftover_goes_next_time() {
    let s = Scratch::with_repo();
    let root = s.path("phone");
    write(&root.join("DCIM/a.jpg"), &bytes(18, 300_000, false));
    s.ok(&["backup", "--device", "pixel", root.to_str().unwrap()]);
    // Which durable step is the sync of the finished archive (the export's lock comes before).
    let log = s.path("points");
    let counted = s.path("counted.tar");
    let out = s
        .command(&["export", "pixel/latest", "--format", "tar", counted.to_str().unwrap()])
        .env("PHONEBAK_CRASH_COUNT", &log)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let points = std::fs::read_to_string(&log).unwrap();
    let sync_at = points
        .lines()
        .find(|l| l.contains("\tsync\t") && l.contains("counted.tar"))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("{points}"))
        .to_string();
    for named in [false, true] {
        let folder = s.path(if named { "named" } else { "nameless" });
        std::fs::create_dir(&folder).unwrap();
        let out = folder.join("phone.tar");
        let mut killed = s.command(&["export", "pixel/latest", "--format", "tar", out.to_str().unwrap()]);
        killed.env("PHONEBAK_CRASH_AT", &sync_at);
        if named {
            killed.env("PHONEBAK_NAMED_TEMP", "1");
        }
        let status = killed.status().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "killed");
        let left = names(&folder);
        if named {
            // A file system without nameless files: a hidden, private leftover...
            assert_eq!(left.len(), 1, "{left:?}");
            assert!(left[0].starts_with(".phone.tar.phonebak-"), "{left:?}");
        } else {
            assert_eq!(left, Vec::<String>::new(), "nothing is left by a killed export");
        }
        // ...which the next export to the same file removes.
        let mut again = s.command(&["export", "pixel/latest", "--format", "tar", out.to_str().unwrap()]);
        if named {
            again.env("PHONEBAK_NAMED_TEMP", "1");
        }
        let done = again.output().unwrap();
        assert_eq!(code(&done), 0, "{}", stderr(&done));
        assert_eq!(names(&folder), ["phone.tar"]);
        assert!(tar_listing(&std::fs::read(&out).unwrap()).contains(&"DCIM/a.jpg".to_string()));
    }
}

#[test]
fn damage_that_looks_like_an_end_or_hides_after_it_is_said() {
    let s = Scratch::with_repo();
    // A header zeroed by damage: what follows it must not be dropped without a word.
    let mut tar = Tar::default().file(b"f1", b"one").file(b"f2", b"two").file(b"f3", b"three").end();
    tar[1024..1536].fill(0);
    let zeroed = s.path("zeroed.tar");
    std::fs::write(&zeroed, &tar).unwrap();
    let out = s.run(&["backup", "--device", "pixel", &format!("tar:{}", zeroed.display())]);
    assert_said(&out, 20, &["data after the end-of-archive block"]);
    assert_eq!(snapshot_count(&s), 0, "nothing committed");
}

#[test]
fn paths_deeper_than_a_snapshot_nests_are_refused_not_a_crash() {
    let s = Scratch::with_repo();
    let deep = format!("{}f", "a/".repeat(20_000));
    let tar =
        Tar::default().pax(&[("path", deep.as_bytes())]).file(b"placeholder", b"hi").file(b"ok.txt", b"fine").end();
    let archive = s.path("deep.tar");
    std::fs::write(&archive, &tar).unwrap();
    let out = s.run(&["backup", "--device", "pixel", &format!("tar:{}", archive.display())]);
    assert_said(&out, 3, &["nested deeper than phonebak keeps"]);
    assert!(!stderr(&out).contains("overflow"));
    let check = s.run(&["check"]);
    assert_eq!(code(&check), 0, "{}", stderr(&check));
}

#[test]
fn hard_links_come_back_whole_in_any_part_of_an_export() {
    let s = Scratch::with_repo();
    let root = s.path("phone");
    write(&root.join("a/file"), b"IMPORTANT DATA");
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::hard_link(root.join("a/file"), root.join("b/link")).unwrap();
    let archive = s.path("links.tar");
    let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&archive).args(["a", "b"]).status().unwrap();
    assert!(status.success());
    s.ok(&["backup", "--device", "pixel", &format!("tar:{}", archive.display())]);
    // Whole: the link stays a link. A folder without its target, or with a trailing slash:
    // the link comes as the file it is.
    let whole = s.command(&["export", "pixel/latest", "--format", "tar", "-"]).output().unwrap();
    assert!(whole.stdout == std::fs::read(&archive).unwrap());
    for spec in ["pixel/latest:b", "pixel/latest:b/", "pixel/latest:b/link"] {
        let part = s.command(&["export", spec, "--format", "tar", "-"]).output().unwrap();
        assert_eq!(code(&part), 0, "{spec}: {}", stderr(&part));
        let back = s.path(&format!("back-{}", spec.len()));
        gnu_untar(&part.stdout, &back);
        assert_eq!(std::fs::read(back.join("b/link")).unwrap(), b"IMPORTANT DATA", "{spec}");
    }
    // A POSIX hard link that carries its data (star writes them) is kept and given back.
    let with_data = Tar::default().file(b"a", b"hello").raw(ustar_header(b"h", 5, b'1', b"a"), b"world").end();
    let path = s.path("with-data.tar");
    std::fs::write(&path, &with_data).unwrap();
    s.ok(&["backup", "--device", "star", &format!("tar:{}", path.display())]);
    let again = s.command(&["export", "star/latest", "--format", "tar", "-"]).output().unwrap();
    assert!(again.stdout == with_data, "byte for byte");
    // A link whose own name is to be kept without content is kept so.
    let named = Tar::default()
        .file(b"docs/a.bin", b"SECRET")
        .raw(ustar_header(b"docs/b.mp3", 0, b'1', b"docs/a.bin"), b"")
        .end();
    let path = s.path("named.tar");
    std::fs::write(&path, &named).unwrap();
    s.ok(&["backup", "--device", "music", "--metadata-only", "*.mp3", &format!("tar:{}", path.display())]);
    let listed = s.json(&["ls", "music/latest", "--omitted"]);
    assert_eq!(listed[0]["path"], "docs/b.mp3", "{listed}");
    assert_eq!(listed[0]["size"], 6);
    // A link to a file --exclude leaves out: said as such.
    let out = s.run(&["backup", "--device", "inc", "--exclude", "a", &format!("tar:{}", archive.display())]);
    assert_said(&out, 3, &["which --exclude or --include leaves out"]);
    let out = s.run(&["backup", "--device", "bad", "--metadata-only", "[", &format!("tar:{}", archive.display())]);
    assert_eq!(code(&out), 2, "a bad pattern is a usage error: {}", stderr(&out));
}

#[test]
fn a_name_on_the_phone_cannot_pass_for_the_listing_and_omitted_names_stay_one_line() {
    let s = Scratch::with_repo();
    let phone = FakePhone::new(&s);
    write(&phone.sdcard().join("x\nphonebak-entry 41ed 0 0 0 0 evil"), b"inj");
    write(&phone.sdcard().join("Music/two\nlines.mp3"), b"song");
    let out = s
        .command(&["backup", "--device", "pixel", "--metadata-only", "*.mp3", "adb:"])
        .env("PATH", &phone.path)
        .env("FAKE_ADB_ROOT", &phone.root)
        .output()
        .unwrap();
    // Its content cannot be asked of the phone's tar by name (said, exit 3); it adds nothing.
    assert_said(&out, 3, &["a name with a line break"]);
    let listing = s.ok(&["ls", "pixel/latest"]);
    assert!(!listing.contains("/evil"), "{listing}");
    let omitted = s.ok(&["ls", "pixel/latest", "--omitted"]);
    assert_eq!(omitted.lines().count(), 1, "{omitted:?}");
    assert!(omitted.contains("/Music/two\\nlines.mp3"), "{omitted}");
}

#[test]
fn global_headers_and_replaced_names_never_spoil_an_export() {
    let s = Scratch::with_repo();
    // A PAX global header (size=3 for every later entry) before an entry left out.
    let global = {
        let body = b"10 size=3\n".to_vec();
        let mut t = Tar::default();
        t.raw(ustar_header(b"pax_global_header", body.len() as u64, b'g', b""), &body);
        t.0
    };
    let mut archive = global;
    archive.extend(
        Tar::default()
            .raw(ustar_header(b"x/skip", 0, b'0', b""), b"SSS")
            .raw(ustar_header(b"d/a", 0, b'0', b""), b"AAA")
            .end(),
    );
    let path = s.path("global.tar");
    std::fs::write(&path, &archive).unwrap();
    assert_eq!(tar_listing(&archive), ["x/skip", "d/a"]);
    for (device, extra) in
        [("part", None), ("excluded", Some(["--exclude", "skip"])), ("omitted", Some(["--metadata-only", "skip"]))]
    {
        let mut args = vec!["backup", "--device", device];
        if let Some(extra) = &extra {
            args.extend_from_slice(extra);
        }
        let spec = format!("tar:{}", path.display());
        args.push(&spec);
        s.ok(&args);
        let from = if extra.is_none() { format!("{device}/latest:d") } else { format!("{device}/latest") };
        let out = s.command(&["export", &from, "--format", "tar", "-"]).output().unwrap();
        assert_eq!(code(&out), 0, "{device}: {}", stderr(&out));
        assert_eq!(tar_listing(&out.stdout), ["d/a"], "{device}: GNU tar reads it whole");
        let back = s.path(&format!("back-{device}"));
        gnu_untar(&out.stdout, &back);
        assert_eq!(std::fs::read(back.join("d/a")).unwrap(), b"AAA", "{device}");
    }
    // `a` sent as a file, linked by `b`, then sent again as a link to `x`: b is HELLO, a WORLD.
    let replaced = Tar::default()
        .file(b"x", b"WORLD")
        .file(b"a", b"HELLO")
        .raw(ustar_header(b"b", 0, b'1', b"a"), b"")
        .raw(ustar_header(b"a", 0, b'1', b"x"), b"")
        .end();
    let path = s.path("replaced.tar");
    std::fs::write(&path, &replaced).unwrap();
    s.ok(&["backup", "--device", "replaced", &format!("tar:{}", path.display())]);
    let out = s.command(&["export", "replaced/latest", "--format", "tar", "-"]).output().unwrap();
    assert_said(&out, 3, &["a: the archive has it again further on"]);
    let back = s.path("back-replaced");
    gnu_untar(&out.stdout, &back);
    assert_eq!(std::fs::read(back.join("b")).unwrap(), b"HELLO");
    assert_eq!(std::fs::read(back.join("a")).unwrap(), b"WORLD");
    // A hard link to an empty file stays a link.
    let empty = Tar::default().file(b"e", b"").raw(ustar_header(b"f", 0, b'1', b"e"), b"").end();
    let path = s.path("empty.tar");
    std::fs::write(&path, &empty).unwrap();
    s.ok(&["backup", "--device", "empty", &format!("tar:{}", path.display())]);
    let out = s.command(&["export", "empty/latest", "--format", "tar", "-"]).output().unwrap();
    assert!(out.stdout == empty, "byte for byte");
}

#[test]
fn absurd_sizes_endless_headers_and_hidden_entries_are_damage() {
    let s = Scratch::with_repo();
    let mut huge = ustar_header(b"a", 0, b'0', b"");
    huge[124] = 0x80;
    huge[125..128].fill(0);
    huge[128..136].copy_from_slice(&(u64::MAX - 10).to_be_bytes());
    seal(&mut huge);
    let base256 = Tar::default().raw(huge, b"x").end();
    let pax_max = Tar::default().pax(&[("size", u64::MAX.to_string().as_bytes())]).file(b"a", b"x").end();
    let mut many_globals = Vec::new();
    for _ in 0..9 {
        let body = format!("1000016 comment={}\n", "c".repeat(999_999)).into_bytes();
        let mut t = Tar::default();
        t.raw(ustar_header(b"pax_global_header", body.len() as u64, b'g', b""), &body);
        many_globals.extend(t.0);
    }
    many_globals.extend(Tar::default().file(b"a", b"x").end());
    let mut hidden = Tar::default().file(b"a", b"A").0.clone();
    hidden.extend(vec![0u8; 2 << 20]);
    hidden.extend(Tar::default().file(b"secret", b"LOST").end());
    for (name, bytes, said) in [
        ("base256", base256, "more than any archive holds"),
        ("pax-max", pax_max, "more than any archive holds"),
        ("globals", many_globals, "extension headers of more than"),
        ("hidden", hidden, "after the end-of-archive block"),
    ] {
        let path = s.path(&format!("{name}.tar"));
        std::fs::write(&path, bytes).unwrap();
        let out = s.run(&["backup", "--device", "p", &format!("tar:{}", path.display())]);
        assert_said(&out, 20, &[said]);
        assert!(!stderr(&out).contains("panicked"), "{name}");
    }
    assert_eq!(snapshot_count(&s), 0);
}

#[test]
fn odd_names_in_listings_a_fifo_by_the_export_and_a_closed_json_reader() {
    let s = Scratch::with_repo();
    let mut t = Tar::default();
    t.pax(&[("path", b"m/bad\xff\xfe\xc2\x85.mp3")]).file(b"placeholder", b"x");
    for i in 0..3000 {
        t.file(format!("m/f{i:05}.mp3").as_bytes(), b"z");
    }
    let path = s.path("odd.tar");
    std::fs::write(&path, t.end()).unwrap();
    s.ok(&["backup", "--device", "p", "--metadata-only", "m", &format!("tar:{}", path.display())]);
    let text = s.ok(&["ls", "p/latest", "--omitted"]);
    assert!(text.contains("/m/bad\\xff\\xfe\\u{85}.mp3"), "{}", text.lines().next().unwrap());
    // A reader that stops early: exit 0, as for any listing.
    let mut child = s.command(&["ls", "p/latest", "--omitted", "--json"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // Something that is not a file where an export's leftovers go never holds it up.
    let folder = s.path("out");
    std::fs::create_dir(&folder).unwrap();
    let fifo = std::ffi::CString::new(folder.join(".k.tar.phonebak-zz").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let out = run_bounded_env(&s, &["export", "p/latest", "--format", "tar", folder.join("k.tar").to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

fn run_bounded_env(s: &Scratch, args: &[&str]) -> std::process::Output {
    let mut child =
        s.command(args).env("PHONEBAK_NAMED_TEMP", "1").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("the export hung");
}
