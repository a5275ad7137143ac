//! The archive formats phones and their tools write, read (and written again by `export`):
//! tar streams and Android's backup archives (.ab), which hold a tar stream.

pub mod ab;
pub mod tar;
pub mod tar_writer;
