//! The encryption of iOS backups, as iOS does it: a keybag (TLV records in Manifest.plist's
//! `BackupKeyBag`) whose class keys are wrapped (RFC 3394) with a key derived from the backup's
//! password (PBKDF2-HMAC-SHA256 over DPSL/DPIC, then PBKDF2-HMAC-SHA1 over SALT/ITER); each file,
//! and Manifest.db, is AES-256-CBC (zero IV, PKCS#7) under its own key, wrapped with a class key
//! and stored as 4 bytes of class (little-endian) then the 40-byte wrapped key.
//!
//! Used both ways: the `ios-backup:` source decrypts, `export --format ios-backup` encrypts again
//! with the same keys, so the ciphertext is the same bytes.

use std::collections::HashMap;
use std::io::{self, Read};

use aes::cipher::{BlockDecryptMut, KeyIvInit};

use crate::cbc_stream::{pkcs7_pad_len, BLOCK};

type Decryptor = cbc::Decryptor<aes::Aes256>;

/// iOS encrypts each file with a zero IV (its key is the file's own).
pub const ZERO_IV: [u8; BLOCK] = [0; BLOCK];
/// iOS uses 10 000 000 (SHA-256) and 10 000 (SHA-1); a crafted keybag must not make phonebak
/// derive for hours.
pub const MAX_ITERATIONS: u32 = 50_000_000;
/// The keybags iOS writes are about 2 KiB.
pub const MAX_KEYBAG: usize = 1 << 16;
/// Wrapping is only for the backup's password here (WRAP bit 2); device-bound keys (bit 1)
/// cannot be unwrapped off the phone.
const WRAP_PASSCODE: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum IosCryptoError {
    #[error("the keybag is damaged: {0}")]
    Keybag(String),
    #[error("wrong password for this encrypted iPhone backup")]
    WrongPassword,
    #[error("a wrapped key is damaged: {0}")]
    WrappedKey(String),
}

#[derive(Clone, Debug, Default)]
pub struct ClassKeyRecord {
    pub class: u32,
    pub wrap: u32,
    pub wrapped: Vec<u8>,
}

/// A parsed backup keybag: what derives the passcode key, and the wrapped class keys.
#[derive(Clone, Debug, Default)]
pub struct Keybag {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub dp_salt: Vec<u8>,
    pub dp_iterations: u32,
    pub class_keys: Vec<ClassKeyRecord>,
}

/// Parses the TLV records of a keybag: 4-byte tag, 4-byte big-endian length, value. The first
/// `UUID` is the keybag's own; each later one starts a class key.
pub fn parse_keybag(bytes: &[u8]) -> Result<Keybag, IosCryptoError> {
    let bad = |why: String| IosCryptoError::Keybag(why);
    if bytes.len() > MAX_KEYBAG {
        return Err(bad(format!("{} bytes, more than any keybag", bytes.len())));
    }
    let mut keybag = Keybag::default();
    let mut current: Option<ClassKeyRecord> = None;
    let mut seen_uuid = false;
    let mut rest = bytes;
    while !rest.is_empty() {
        let (header, after) = rest.split_first_chunk::<8>().ok_or_else(|| bad("a record cut short".into()))?;
        let tag: [u8; 4] = header[..4].try_into().expect("4 bytes");
        let len = u32::from_be_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        if len > after.len() {
            return Err(bad(format!("record {} claims {len} bytes, {} are left", tag_text(&tag), after.len())));
        }
        let (value, after) = after.split_at(len);
        rest = after;
        let int = || -> Result<u32, IosCryptoError> {
            <[u8; 4]>::try_from(value)
                .map(u32::from_be_bytes)
                .map_err(|_| bad(format!("{} is {len} bytes, not 4", tag_text(&tag))))
        };
        match &tag {
            b"UUID" if !seen_uuid => seen_uuid = true,
            b"UUID" => {
                if let Some(done) = current.take() {
                    keybag.class_keys.push(done);
                }
                current = Some(ClassKeyRecord::default());
            }
            b"CLAS" | b"WRAP" | b"WPKY" if current.is_some() => {
                let key = current.as_mut().expect("checked");
                match &tag {
                    b"CLAS" => key.class = int()?,
                    b"WRAP" => key.wrap = int()?,
                    _ => key.wrapped = value.to_vec(),
                }
            }
            b"SALT" => keybag.salt = value.to_vec(),
            b"ITER" => keybag.iterations = int()?,
            b"DPSL" => keybag.dp_salt = value.to_vec(),
            b"DPIC" => keybag.dp_iterations = int()?,
            _ => {} // VERS, TYPE, HMCK, KTYP, PBKY, DPWT and tags newer iOS adds
        }
    }
    if let Some(done) = current {
        keybag.class_keys.push(done);
    }
    if keybag.salt.is_empty() || keybag.iterations == 0 {
        return Err(bad("no SALT or ITER".into()));
    }
    for (what, count) in [("ITER", keybag.iterations), ("DPIC", keybag.dp_iterations)] {
        if count > MAX_ITERATIONS {
            return Err(bad(format!("{what} {count} is beyond any iOS (at most {MAX_ITERATIONS})")));
        }
    }
    if !keybag.class_keys.iter().any(|k| k.wrap & WRAP_PASSCODE != 0) {
        return Err(bad("no class key wrapped with the backup's password".into()));
    }
    Ok(keybag)
}

fn tag_text(tag: &[u8; 4]) -> String {
    String::from_utf8_lossy(tag).escape_debug().to_string()
}

/// The class keys of an unlocked keybag, by protection class.
pub struct ClassKeys {
    keys: HashMap<u32, [u8; 32]>,
}

impl Keybag {
    /// The key the class keys are wrapped with: what the password opens.
    pub fn passcode_key(&self, password: &[u8]) -> [u8; 32] {
        let mut key = [0u8; 32];
        if self.dp_iterations > 0 && !self.dp_salt.is_empty() {
            let mut first = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, &self.dp_salt, self.dp_iterations, &mut first);
            pbkdf2::pbkdf2_hmac::<sha1::Sha1>(&first, &self.salt, self.iterations, &mut key);
        } else {
            // Keybags from before iOS 10.2 have only the SHA-1 round.
            pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, &self.salt, self.iterations, &mut key);
        }
        key
    }

    /// Unwraps every class key with the password; a key that fails RFC 3394's integrity check
    /// means the password is wrong.
    pub fn unlock(&self, password: &[u8]) -> Result<ClassKeys, IosCryptoError> {
        let passcode_key = aes_kw::KekAes256::from(self.passcode_key(password));
        let mut keys = HashMap::new();
        for record in self.class_keys.iter().filter(|k| k.wrap & WRAP_PASSCODE != 0) {
            if record.wrapped.len() != 40 {
                return Err(IosCryptoError::Keybag(format!(
                    "class {}'s wrapped key is {} bytes, not 40",
                    record.class,
                    record.wrapped.len()
                )));
            }
            let mut key = [0u8; 32];
            passcode_key.unwrap(&record.wrapped, &mut key).map_err(|_| IosCryptoError::WrongPassword)?;
            keys.insert(record.class, key);
        }
        Ok(ClassKeys { keys })
    }
}

impl ClassKeys {
    /// Unwraps a file's (or Manifest.db's) key: 4 bytes of protection class, little-endian,
    /// then the 40-byte wrapped key.
    pub fn unwrap_key(&self, stored: &[u8]) -> Result<[u8; 32], IosCryptoError> {
        let bad = |why: String| IosCryptoError::WrappedKey(why);
        if stored.len() != 44 {
            return Err(bad(format!("{} bytes, not 44", stored.len())));
        }
        let class = u32::from_le_bytes(stored[..4].try_into().expect("4 bytes"));
        let class_key = self.keys.get(&class).ok_or_else(|| bad(format!("no key of protection class {class}")))?;
        let mut key = [0u8; 32];
        aes_kw::KekAes256::from(*class_key)
            .unwrap(&stored[4..], &mut key)
            .map_err(|_| bad(format!("it does not unwrap with class {class}'s key")))?;
        Ok(key)
    }
}

/// The plaintext length of a ciphertext whose last two blocks are `tail` (32 bytes, or 16 when
/// the ciphertext is one block) at the end of `total` bytes: `None` if its padding is not
/// PKCS#7 (damage), so the caller keeps every decrypted byte.
pub fn plain_len(key: &[u8; 32], total: u64, tail: &[u8]) -> Option<u64> {
    if total == 0 || !total.is_multiple_of(BLOCK as u64) || (tail.len() != BLOCK && tail.len() != 2 * BLOCK) {
        return None;
    }
    let (iv, last) =
        if tail.len() == BLOCK { ([0u8; BLOCK], tail) } else { (tail[..BLOCK].try_into().ok()?, &tail[BLOCK..]) };
    let mut block = [0u8; BLOCK];
    block.copy_from_slice(last);
    Decryptor::new(key.into(), &iv.into()).decrypt_block_mut((&mut block).into());
    let pad = pkcs7_pad_len(&block)?;
    Some(total - pad as u64)
}

/// Why an encrypted backup's keys could not be had.
pub enum UnlockError<E> {
    /// The password could not be had (not given, unreadable).
    Password(E),
    WrongPassword,
    /// Manifest.plist lacks what it needs or holds damaged keys.
    Damaged(String),
}

/// An encrypted backup's keys: its class keys, and Manifest.db's own key.
pub struct BackupKeys {
    pub class_keys: ClassKeys,
    pub manifest_key: [u8; 32],
}

/// Unlocks an encrypted backup from its Manifest.plist (`BackupKeyBag`, `ManifestKey`); the
/// password is asked for only once the keybag is known to be sound.
pub fn unlock_backup<E>(
    manifest_plist: &plist::Dictionary,
    password: impl FnOnce() -> Result<Vec<u8>, E>,
) -> Result<BackupKeys, UnlockError<E>> {
    let data = |key: &str| {
        manifest_plist
            .get(key)
            .and_then(|v| v.as_data())
            .ok_or_else(|| UnlockError::Damaged(format!("an encrypted backup without {key}")))
    };
    let keybag = parse_keybag(data("BackupKeyBag")?).map_err(|e| UnlockError::Damaged(e.to_string()))?;
    let stored_manifest_key = data("ManifestKey")?;
    let password = password().map_err(UnlockError::Password)?;
    let class_keys = keybag.unlock(&password).map_err(|e| match e {
        IosCryptoError::WrongPassword => UnlockError::WrongPassword,
        other => UnlockError::Damaged(other.to_string()),
    })?;
    let manifest_key = class_keys
        .unwrap_key(stored_manifest_key)
        .map_err(|e| UnlockError::Damaged(format!("its ManifestKey: {e}")))?;
    Ok(BackupKeys { class_keys, manifest_key })
}

/// Opens a backup's catalogue (Manifest.db) read-only and immutable: SQLite then takes no lock
/// and makes no `-shm` or `-wal` file beside it (never a write into the user's backup folder, a
/// scratch folder or an export), and reads a WAL-mode file as it is, without a log.
pub fn open_catalogue(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &byte in path.as_os_str().as_bytes() {
        match byte.is_ascii_alphanumeric() || b"/._-~".contains(&byte) {
            true => uri.push(byte as char),
            false => uri.push_str(&format!("%{byte:02X}")),
        }
    }
    uri.push_str("?immutable=1");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    rusqlite::Connection::open_with_flags(uri, flags)
}

/// A decrypted Manifest.db for SQLite to read, whose contents never have a name on disk: SQLite
/// opens an empty new file in a private folder, the name and folder go, and only then are the
/// decrypted bytes written, through a descriptor of that nameless file. So nothing decrypted
/// outlives the process, however it ends. (SQLite cannot open a file that has no name at all:
/// it resolves `/proc/self/fd/N` to the name the file no longer has.)
pub struct Scratch {
    file: std::fs::File,
    catalogue: rusqlite::Connection,
}

impl Scratch {
    pub fn copy_of(mut reader: impl Read) -> io::Result<Scratch> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = std::env::temp_dir().join(format!("phonebak-{}", hex::encode(rand::random::<[u8; 8]>())));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("Manifest.db");
        let opened =
            std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path).and_then(
                |file| {
                    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
                    let catalogue = rusqlite::Connection::open_with_flags(&path, flags).map_err(io::Error::other)?;
                    Ok((file, catalogue))
                },
            );
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        let (mut file, catalogue) = opened?;
        io::copy(&mut reader, &mut file)?;
        Ok(Scratch { file, catalogue })
    }

    /// The decrypted bytes, to read them again (with positioned reads: the copy's offset is at
    /// its end).
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// SQLite's connection to the decrypted catalogue.
    pub fn catalogue(&self) -> &rusqlite::Connection {
        &self.catalogue
    }

    /// The decrypted bytes, to read them again (once the catalogue is no longer needed).
    pub fn into_file(self) -> std::fs::File {
        self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_reads_a_scratch_copy_whose_bytes_never_had_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("made.db");
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);").unwrap();
        drop(db);
        let before: Vec<_> = std::fs::read_dir(std::env::temp_dir()).unwrap().map(|e| e.unwrap().path()).collect();
        let scratch = Scratch::copy_of(std::fs::File::open(&db_path).unwrap()).unwrap();
        let after: Vec<_> = std::fs::read_dir(std::env::temp_dir()).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(after.iter().all(|p| before.contains(p) || !p.to_string_lossy().contains("phonebak-")), "{after:?}");
        let x: i64 = scratch.catalogue().query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 42);
        let mut bytes = Vec::new();
        scratch.into_file().read_to_end(&mut bytes).unwrap();
        assert!(bytes.is_empty(), "read from the end: the copy's own offset");
    }

    #[test]
    fn keybags_with_wrong_lengths_or_absurd_counts_are_refused() {
        let record = |tag: &[u8; 4], value: &[u8]| [&tag[..], &(value.len() as u32).to_be_bytes(), value].concat();
        let good = [
            record(b"VERS", &4u32.to_be_bytes()),
            record(b"UUID", &[0; 16]),
            record(b"SALT", &[1; 20]),
            record(b"ITER", &5u32.to_be_bytes()),
            record(b"UUID", &[2; 16]),
            record(b"CLAS", &3u32.to_be_bytes()),
            record(b"WRAP", &2u32.to_be_bytes()),
            record(b"WPKY", &[9; 40]),
        ]
        .concat();
        let keybag = parse_keybag(&good).unwrap();
        assert_eq!(keybag.class_keys.len(), 1);
        assert!(matches!(keybag.unlock(b"x"), Err(IosCryptoError::WrongPassword)));
        assert!(parse_keybag(&good[..good.len() - 1]).is_err(), "cut short");
        let absurd = [good.clone(), record(b"DPIC", &u32::MAX.to_be_bytes())].concat();
        assert!(parse_keybag(&absurd).unwrap_err().to_string().contains("DPIC"));
        let short_int = [good.clone(), record(b"ITER", &[1, 2])].concat();
        assert!(parse_keybag(&short_int).is_err());
        let short_key = [good[..good.len() - 48].to_vec(), record(b"WPKY", &[9; 39])].concat();
        assert!(matches!(parse_keybag(&short_key).unwrap().unlock(b"x"), Err(IosCryptoError::Keybag(_))));
    }
}
