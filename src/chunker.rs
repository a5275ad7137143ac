//! Content-defined chunking (FastCDC 2020), so that an edit in the middle of a file, or the same
//! photo under a new name, changes only the chunks it touches.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams { min_size: 256 * 1024, avg_size: 1024 * 1024, max_size: 4 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    /// For files recognised as databases (see `backup`): 16 KiB / 64 KiB / 256 KiB. Which sizes
    /// a file was cut with matters only for deduplication; any reader reads any chunk list.
    pub const DATABASE: ChunkerParams =
        ChunkerParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 };

    /// FastCDC asserts on out-of-range sizes; a damaged config must be an error, not a panic.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::*;
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min_size)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size;
        if ok {
            Ok(())
        } else {
            Err(format!("chunker sizes {}/{}/{} are out of range", self.min_size, self.avg_size, self.max_size))
        }
    }
}

/// Splits everything `reader` yields into chunks. Input shorter than `min_size` is one chunk
/// read in one go, which is what most of a phone's files are.
pub fn chunks<R: Read>(reader: R, params: ChunkerParams, seed: u64) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    StreamCDC::with_level_and_seed(
        reader,
        params.min_size,
        params.avg_size,
        params.max_size,
        Normalization::Level1,
        seed,
    )
    .map(|chunk| match chunk {
        Ok(data) => Ok(data.data),
        Err(fastcdc::v2020::Error::IoError(e)) => Err(e),
        Err(other) => Err(std::io::Error::other(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_input_and_respect_sizes() {
        let params = ChunkerParams { min_size: 1024, avg_size: 4096, max_size: 16384 };
        let data: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let pieces: Vec<Vec<u8>> = chunks(&data[..], params, 42).map(|c| c.unwrap()).collect();
        assert!(pieces.len() > 10);
        assert_eq!(pieces.concat(), data);
        for piece in &pieces[..pieces.len() - 1] {
            assert!(piece.len() >= 1024 && piece.len() <= 16384);
        }
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let params = ChunkerParams { min_size: 1024, avg_size: 4096, max_size: 16384 };
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        let mut edited = data.clone();
        edited.splice(150_000..150_000, b"inserted bytes".iter().copied());
        let a: std::collections::HashSet<Vec<u8>> = chunks(&data[..], params, 1).map(|c| c.unwrap()).collect();
        let b: Vec<Vec<u8>> = chunks(&edited[..], params, 1).map(|c| c.unwrap()).collect();
        let new = b.iter().filter(|c| !a.contains(*c)).count();
        assert!(new <= 3, "{new} new chunks after one small insertion");
    }

    #[test]
    fn damaged_params_are_rejected() {
        assert!(ChunkerParams { min_size: 0, avg_size: 1, max_size: 2 }.validate().is_err());
        assert!(ChunkerParams::default().validate().is_ok());
    }
}
