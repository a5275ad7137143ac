//! The repository's `config` file: format version, chunker and compression settings, and the
//! sealed master keys. Plain JSON, so a person (or a newer phonebak) can read what it is.

use serde::{Deserialize, Serialize};

use super::crypto::{self, KdfParams, MasterKeys, Sealer};
use super::RepoError;
use crate::chunker::ChunkerParams;

/// The on-disk format this build writes and the newest it reads (docs/FORMAT.md). Version 2
/// added framed blobs; version 1 repositories are read and written as version 1.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
pub struct Config {
    pub format_version: u32,
    pub repository_id: String,
    pub created: String,
    pub chunker: ChunkerParams,
    /// zstd level; 0 stores everything uncompressed.
    pub compression_level: i32,
    /// Target size of a data pack in bytes.
    pub pack_size: u64,
    pub keys: KeySlot,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "kebab-case")]
pub enum KeySlot {
    /// `init --no-encryption`: the keys are stored in the clear.
    None { keys: String },
    /// The master keys sealed with a key derived from the password.
    Argon2idAes256gcm { kdf: KdfParams, salt: String, sealed_keys: String },
}

const KEYS_AAD: &[u8] = b"phonebak master keys";
/// Pack offsets are u32: a pack closes at `pack_size` plus at most one blob, well below 4 GiB.
pub const MAX_PACK_SIZE: u64 = 1 << 30;

/// Read first, alone, so that a newer format is refused before its fields are misread.
#[derive(Deserialize)]
struct VersionProbe {
    format_version: u32,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, RepoError> {
        let probe: VersionProbe = serde_json::from_slice(bytes)
            .map_err(|e| RepoError::Corrupt(format!("config is not a phonebak config: {e}")))?;
        if probe.format_version == 0 {
            return Err(RepoError::Corrupt("config: format version 0 does not exist".into()));
        }
        if probe.format_version > FORMAT_VERSION {
            return Err(RepoError::NewerFormat { found: probe.format_version, supported: FORMAT_VERSION });
        }
        let config: Config = serde_json::from_slice(bytes).map_err(|e| RepoError::Corrupt(format!("config: {e}")))?;
        config.chunker.validate().map_err(|e| RepoError::Corrupt(format!("config: {e}")))?;
        if !(0..=22).contains(&config.compression_level) || !(1..=MAX_PACK_SIZE).contains(&config.pack_size) {
            return Err(RepoError::Corrupt("config: compression level or pack size out of range".into()));
        }
        if let KeySlot::Argon2idAes256gcm { kdf, .. } = &config.keys {
            kdf.validate().map_err(|e| RepoError::Corrupt(format!("config: {e}")))?;
        }
        Ok(config)
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self.keys, KeySlot::Argon2idAes256gcm { .. })
    }

    pub fn seal_keys(keys: &MasterKeys, password: Option<&[u8]>, kdf: KdfParams) -> Result<KeySlot, RepoError> {
        let encoded = bincode::serde::encode_to_vec(keys, bincode::config::standard())
            .map_err(|e| RepoError::Corrupt(e.to_string()))?;
        Ok(match password {
            None => KeySlot::None { keys: hex::encode(encoded) },
            Some(password) => {
                let salt: [u8; 16] = crypto::random_bytes();
                let kek = crypto::derive_key(password, &salt, kdf).map_err(|e| RepoError::Corrupt(e.to_string()))?;
                let sealed = Sealer::encrypted(&kek).seal(&encoded, KEYS_AAD);
                KeySlot::Argon2idAes256gcm { kdf, salt: hex::encode(salt), sealed_keys: hex::encode(sealed) }
            }
        })
    }

    /// Opens the master keys; `password` is asked for only when the repository is encrypted.
    pub fn open_keys(&self, password: impl FnOnce() -> Result<Vec<u8>, RepoError>) -> Result<MasterKeys, RepoError> {
        let bad = |what: &str| RepoError::Corrupt(format!("config: damaged {what}"));
        let encoded = match &self.keys {
            KeySlot::None { keys } => hex::decode(keys).map_err(|_| bad("keys"))?,
            KeySlot::Argon2idAes256gcm { kdf, salt, sealed_keys } => {
                let salt = hex::decode(salt).map_err(|_| bad("salt"))?;
                let sealed = hex::decode(sealed_keys).map_err(|_| bad("sealed keys"))?;
                let kek = crypto::derive_key(&password()?, &salt, *kdf)
                    .map_err(|e| RepoError::Corrupt(format!("config: {e}")))?;
                Sealer::encrypted(&kek).open(&sealed, KEYS_AAD).map_err(|_| RepoError::WrongPassword)?
            }
        };
        super::decode_record(&encoded).map_err(|_| bad("keys"))
    }
}
