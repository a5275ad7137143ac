//! Android backup archives (`adb backup`, `.ab`), versions 1 to 5: a text header of lines, then
//! a tar stream, deflated with zlib when the header says so, and encrypted with AES-256-CBC
//! under a random master key when it says `AES-256`.
//!
//! The header of an encrypted archive carries the master key (with its IV and a checksum)
//! encrypted under a key derived from the user's password: PBKDF2-HMAC-SHA1 over the user salt,
//! 256 bits. Version 1 fed PBKDF2 the low byte of each UTF-16 unit of the password; later
//! versions feed it UTF-8. The checksum is PBKDF2 over the master key's bytes turned into Java
//! chars, and that turning sign-extends: from version 2 a byte 0x80..0xff becomes U+FF80..U+FFFF
//! and reaches PBKDF2 as three UTF-8 bytes. Both encodings are tried, as some writers mixed them.

use std::io::{self, BufRead, Read, Write};

use crate::cbc_stream::{DecryptingReader, EncryptingWriter, BLOCK};

pub const MAGIC: &str = "ANDROID BACKUP";
/// The versions Android has written (1: 4.0, 2: 4.4, 3: 5.0, 4: 6.0, 5: 7.0 and later).
pub const NEWEST_VERSION: u32 = 5;
/// Android uses 10 000; a crafted header must not make phonebak derive for hours.
pub const MAX_ROUNDS: u32 = 5_000_000;
/// The longest header line Android writes is the encrypted master key, 160 hex digits.
const MAX_LINE: usize = 4096;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AbError {
    #[error("not an Android backup (.ab): it does not start with \"ANDROID BACKUP\"")]
    NotAb,
    #[error("its header is damaged: {0}")]
    BadHeader(String),
    #[error("it is version {0} of the format; phonebak reads versions 1 to {NEWEST_VERSION}")]
    NewerVersion(u32),
    #[error("the password does not open this backup")]
    WrongPassword,
    #[error("reading its header: {0}")]
    Io(#[from] io::Error),
}

/// What an encrypted archive's header holds to find its master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub user_salt: Vec<u8>,
    pub checksum_salt: Vec<u8>,
    pub rounds: u32,
    pub user_iv: [u8; BLOCK],
    pub master_key_blob: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbHeader {
    pub version: u32,
    pub compressed: bool,
    pub encryption: Option<KeyInfo>,
}

/// The key and IV the archive's data is encrypted with.
#[derive(Clone)]
pub struct MasterKey {
    pub key: [u8; KEY_LEN],
    pub iv: [u8; BLOCK],
}

fn read_line(input: &mut impl BufRead, what: &str) -> Result<String, AbError> {
    let mut line = Vec::new();
    input.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(AbError::BadHeader(if line.len() > MAX_LINE {
            format!("its {what} line is too long")
        } else {
            format!("it ends before its {what} line")
        }));
    }
    line.pop();
    String::from_utf8(line).map_err(|_| AbError::BadHeader(format!("its {what} line is not text")))
}

fn hex_line(input: &mut impl BufRead, what: &str) -> Result<Vec<u8>, AbError> {
    let line = read_line(input, what)?;
    let bytes = hex::decode(line.trim()).map_err(|_| AbError::BadHeader(format!("its {what} is not hexadecimal")))?;
    if bytes.is_empty() {
        return Err(AbError::BadHeader(format!("its {what} is empty")));
    }
    Ok(bytes)
}

/// Reads the header lines; `input` is left at the first byte of the data.
pub fn read_header(input: &mut impl BufRead) -> Result<AbHeader, AbError> {
    let mut magic = Vec::new();
    input.take(MAGIC.len() as u64 + 1).read_to_end(&mut magic)?;
    let got = magic.len();
    if &magic[..got] != format!("{MAGIC}\n").as_bytes() {
        return Err(AbError::NotAb);
    }
    let version_line = read_line(input, "version")?;
    let version: u32 = version_line
        .trim()
        .parse()
        .map_err(|_| AbError::BadHeader(format!("its version {version_line:?} is not a number")))?;
    if version == 0 {
        return Err(AbError::BadHeader("its version is 0".into()));
    }
    if version > NEWEST_VERSION {
        return Err(AbError::NewerVersion(version));
    }
    let compressed = match read_line(input, "compression")?.trim() {
        "0" => false,
        "1" => true,
        other => return Err(AbError::BadHeader(format!("its compression flag is {other:?}, not 0 or 1"))),
    };
    let encryption = match read_line(input, "encryption")?.trim() {
        "none" => None,
        "AES-256" => {
            let user_salt = hex_line(input, "password salt")?;
            let checksum_salt = hex_line(input, "checksum salt")?;
            let rounds_line = read_line(input, "rounds")?;
            let rounds: u32 = rounds_line
                .trim()
                .parse()
                .map_err(|_| AbError::BadHeader(format!("its rounds {rounds_line:?} are not a number")))?;
            if rounds == 0 || rounds > MAX_ROUNDS {
                return Err(AbError::BadHeader(format!("{rounds} rounds (1 to {MAX_ROUNDS})")));
            }
            let user_iv =
                hex_line(input, "IV")?.try_into().map_err(|_| AbError::BadHeader("its IV is not 16 bytes".into()))?;
            let master_key_blob = hex_line(input, "master key")?;
            if !master_key_blob.len().is_multiple_of(BLOCK) {
                return Err(AbError::BadHeader("its encrypted master key is not whole blocks".into()));
            }
            Some(KeyInfo { user_salt, checksum_salt, rounds, user_iv, master_key_blob })
        }
        other => return Err(AbError::BadHeader(format!("an unknown encryption {other:?}"))),
    };
    Ok(AbHeader { version, compressed, encryption })
}

/// The bytes PBKDF2 gets for the user's password: the low byte of each UTF-16 unit
/// (version 1), or UTF-8.
fn password_bytes(password: &[u8], version: u32) -> Vec<u8> {
    match (version, std::str::from_utf8(password)) {
        (1, Ok(text)) => text.encode_utf16().map(|unit| unit as u8).collect(),
        _ => password.to_vec(),
    }
}

/// The master key's bytes as PBKDF2 gets them for the checksum: as they are (version 1), or
/// each sign-extended to a Java char and encoded as UTF-8.
fn checksum_bytes(master_key: &[u8], utf8: bool) -> Vec<u8> {
    if !utf8 {
        return master_key.to_vec();
    }
    let mut out = Vec::with_capacity(master_key.len() * 3);
    for &b in master_key {
        let unit = b as i8 as i16 as u16 as u32;
        let c = char::from_u32(unit).expect("U+0000..U+007F and U+FF80..U+FFFF are chars");
        out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes());
    }
    out
}

fn pbkdf2(secret: &[u8], salt: &[u8], rounds: u32) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(secret, salt, rounds, &mut key);
    key
}

/// Finds the master key with the user's password.
pub fn unlock(info: &KeyInfo, version: u32, password: &[u8]) -> Result<MasterKey, AbError> {
    let user_key = pbkdf2(&password_bytes(password, version), &info.user_salt, info.rounds);
    let mut blob = Vec::new();
    DecryptingReader::new(&info.master_key_blob[..], &user_key, &info.user_iv, true)
        .read_to_end(&mut blob)
        .map_err(|_| AbError::WrongPassword)?;
    // [IV length][IV][key length][key][checksum length][checksum]
    let mut fields = Vec::new();
    let mut rest = &blob[..];
    for _ in 0..3 {
        let (&len, tail) = rest.split_first().ok_or(AbError::WrongPassword)?;
        if tail.len() < len as usize {
            return Err(AbError::WrongPassword);
        }
        fields.push(&tail[..len as usize]);
        rest = &tail[len as usize..];
    }
    let (iv, key, stored_checksum) = (fields[0], fields[1], fields[2]);
    let (Ok(iv), Ok(key)) = (<[u8; BLOCK]>::try_from(iv), <[u8; KEY_LEN]>::try_from(key)) else {
        return Err(AbError::WrongPassword);
    };
    let either = [version >= 2, version < 2];
    if !either
        .iter()
        .any(|&utf8| pbkdf2(&checksum_bytes(&key, utf8), &info.checksum_salt, info.rounds) == stored_checksum)
    {
        return Err(AbError::WrongPassword);
    }
    Ok(MasterKey { key, iv })
}

/// What an archive's password comes from; asked only for an encrypted archive.
pub type Password<'a, E> = &'a mut dyn FnMut() -> Result<Vec<u8>, E>;

/// Why an archive could not be opened.
pub enum OpenError<E> {
    /// The password could not be had.
    Password(E),
    Ab(AbError),
}

/// Reads the header of the archive `input`, unlocks it if encrypted, and returns the header and
/// the tar stream inside.
pub fn open<'r, E>(
    input: impl BufRead + Send + 'r,
    password: Password<'_, E>,
) -> Result<(AbHeader, Box<dyn Read + Send + 'r>), OpenError<E>> {
    let mut input = input;
    let header = read_header(&mut input).map_err(OpenError::Ab)?;
    let data: Box<dyn Read + Send + 'r> = match &header.encryption {
        None => Box::new(input),
        Some(info) => {
            let secret = password().map_err(OpenError::Password)?;
            let master = unlock(info, header.version, &secret).map_err(OpenError::Ab)?;
            Box::new(DecryptingReader::new(input, &master.key, &master.iv, true).padding_required())
        }
    };
    Ok(if header.compressed {
        let inflated = flate2::bufread::ZlibDecoder::new(io::BufReader::new(data));
        (header, Box::new(Inflated { inflated, ended: false }))
    } else {
        (header, data)
    })
}

/// An archive's inflated data, which checks at the zlib stream's end that nothing but the
/// stream was there (reading on also checks an encrypted archive's padding).
struct Inflated<R: BufRead> {
    inflated: flate2::bufread::ZlibDecoder<R>,
    ended: bool,
}

impl<R: BufRead> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        let n = self.inflated.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended = true;
            // Reading to the end also checks an encrypted archive's padding.
            if self.inflated.get_mut().read(&mut [0u8; 4096])? != 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "data after the end of its compressed stream"));
            }
        }
        Ok(n)
    }
}

/// The version phonebak writes: the newest, which every Android since 7.0 restores.
pub const WRITE_VERSION: u32 = NEWEST_VERSION;
/// Android's own key derivation rounds and salt length for a new archive.
const WRITE_ROUNDS: u32 = 10_000;
const SALT_LEN: usize = 64;

/// The header of a new archive (compressed; encrypted under `password` when given), and the key
/// and IV its data is then encrypted with.
pub fn new_header(password: Option<&[u8]>) -> (Vec<u8>, Option<MasterKey>) {
    let mut header = format!("{MAGIC}\n{WRITE_VERSION}\n1\n").into_bytes();
    let Some(password) = password else {
        header.extend_from_slice(b"none\n");
        return (header, None);
    };
    let user_salt: [u8; SALT_LEN] = std::array::from_fn(|_| rand::random());
    let checksum_salt: [u8; SALT_LEN] = std::array::from_fn(|_| rand::random());
    let user_iv: [u8; BLOCK] = rand::random();
    let master = MasterKey { key: rand::random(), iv: rand::random() };
    let user_key = pbkdf2(&password_bytes(password, WRITE_VERSION), &user_salt, WRITE_ROUNDS);
    let checksum = pbkdf2(&checksum_bytes(&master.key, true), &checksum_salt, WRITE_ROUNDS);
    // [IV length][IV][key length][key][checksum length][checksum], encrypted with the user's key.
    let mut blob = Vec::with_capacity(3 + BLOCK + 2 * KEY_LEN);
    for field in [&master.iv[..], &master.key[..], &checksum[..]] {
        blob.push(field.len() as u8);
        blob.extend_from_slice(field);
    }
    let mut writer = EncryptingWriter::new(Vec::new(), &user_key, &user_iv);
    writer.write_all(&blob).expect("writing to memory");
    let sealed = writer.finish().expect("writing to memory");
    let hex = |bytes: &[u8]| hex::encode_upper(bytes);
    let lines = [
        "AES-256".to_string(),
        hex(&user_salt),
        hex(&checksum_salt),
        WRITE_ROUNDS.to_string(),
        hex(&user_iv),
        hex(&sealed),
    ];
    for line in lines {
        header.extend_from_slice(line.as_bytes());
        header.push(b'\n');
    }
    (header, Some(master))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_header_reads_back_and_its_password_unlocks_it() {
        let (plain, key) = new_header(None);
        assert!(key.is_none());
        let header = read_header(&mut &plain[..]).unwrap();
        assert_eq!((header.version, header.compressed, header.encryption), (5, true, None));

        let (sealed, key) = new_header(Some("pässword".as_bytes()));
        let key = key.unwrap();
        let header = read_header(&mut &sealed[..]).unwrap();
        let info = header.encryption.unwrap();
        assert_eq!(info.rounds, 10_000);
        let unlocked = unlock(&info, 5, "pässword".as_bytes()).unwrap();
        assert_eq!((unlocked.key, unlocked.iv), (key.key, key.iv));
        assert!(matches!(unlock(&info, 5, b"password"), Err(AbError::WrongPassword)));
    }
}
