//! phonebak: every backup of every phone in one deduplicated, compressed, encrypted, verified
//! repository.
//!
//! Data flows one way: `source` -> `backup` -> `repo` <- readers (`restore`, `check`, the mount);
//! staged files (the mount's `restore/`) -> `push` -> `device`.
//! The repository knows nothing of phones; sources know nothing of the repository.

pub mod archive;
pub mod backup;
pub mod beneath;
pub mod cbc_stream;
pub mod check;
pub mod chunker;
pub mod cli;
pub mod copy;
pub mod device;
pub mod exit;
pub mod export;
pub mod extras;
pub mod forget;
#[doc(hidden)]
pub mod fuzz;
pub mod ios_crypto;
pub mod mount;
pub mod origin;
pub mod progress;
pub mod prune;
pub mod push;
pub mod repair;
pub mod repo;
pub mod restore;
pub mod source;
pub mod state;
pub mod stats;
pub mod stdout;
pub mod tree;
pub mod tree_builder;
pub mod vfs;
