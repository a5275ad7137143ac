//! Entry points for the cargo-fuzz targets in `fuzz/` (scripts/fuzz.sh): each hands arbitrary
//! bytes to one decoder of on-disk data, past the seal (which no fuzzer can forge), and must
//! neither panic, hang nor allocate without bound. The first bytes of some inputs stand for
//! what the caller knows (a file's size, where a header starts).

use crate::repo::{config::Config, index, pack, snapshot, Id};

fn split_u64(data: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = data.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

pub fn tree(data: &[u8]) {
    if let Ok(tree) = crate::tree::Tree::decode(data) {
        assert_eq!(crate::tree::Tree::decode(&tree.encode()).ok(), Some(tree), "a decoded tree re-encodes");
    }
}

pub fn index_trailer(data: &[u8]) {
    if let Some((size, rest)) = split_u64(data) {
        if let Some(trailer) = rest.first_chunk::<{ index::TRAILER_LEN }>() {
            let _ = index::parse_trailer(trailer, size);
        }
    }
}

pub fn index_header(data: &[u8]) {
    if let Some((header_at, rest)) = split_u64(data) {
        let _ = index::parse_header(rest, header_at);
    }
}

pub fn index_page(data: &[u8]) {
    if let Some((first, rest)) = data.split_first_chunk::<32>() {
        if let Some((&packs, page)) = rest.split_first() {
            let _ = index::parse_page(page, &Id(*first), packs as usize);
        }
    }
}

pub fn pack_trailer(data: &[u8]) {
    if let Some((size, rest)) = split_u64(data) {
        if let Some(trailer) = rest.first_chunk::<{ pack::TRAILER_LEN }>() {
            let _ = pack::parse_trailer(trailer, size);
        }
    }
}

pub fn pack_footer(data: &[u8]) {
    if let Some((footer_at, rest)) = split_u64(data) {
        let _ = pack::parse_footer(rest, footer_at);
    }
}

pub fn config(data: &[u8]) {
    if let Ok(config) = Config::parse(data) {
        // Only the unencrypted key slot: the other asks argon2 for its (bounded) work.
        if !config.is_encrypted() {
            let _ = config.open_keys(|| Ok(Vec::new()));
        }
    }
}

pub fn snapshot_record(data: &[u8]) {
    let _ = snapshot::parse_record(data);
}

pub fn push_journal_line(data: &[u8]) {
    let _ = crate::push::Journal::parse(data);
}

/// A tar stream, read to its end with every entry's data, as an import reads it, and what
/// follows its end.
pub fn tar(data: &[u8]) {
    let mut reader = crate::archive::tar::TarReader::new(data);
    loop {
        match reader.next_entry() {
            Ok(Some(header)) => {
                assert!(header.raw.len() as u64 <= reader.position(), "an entry's headers are bytes it read");
                if std::io::copy(&mut reader.content(), &mut std::io::sink()).is_err() {
                    break;
                }
            }
            Ok(None) => {
                let _ = reader.rest_len(1 << 20, false);
                break;
            }
            Err(_) => break,
        }
    }
}

/// An Android backup's header lines; the rest is read as its data (inflated, when it says so,
/// and checked at its end), as an import opens it. An encrypted one gets no password.
pub fn ab_header(data: &[u8]) {
    let mut no_password = || -> Result<Vec<u8>, ()> { Err(()) };
    if let Ok((_, mut stream)) = crate::archive::ab::open(data, &mut no_password) {
        let _ = std::io::copy(&mut stream, &mut std::io::sink());
    }
}

/// An encrypted Android backup: its master key unlocked with a password that is surely wrong
/// (when cheap to derive), and, past the header, its data decrypted with a key of the input's.
pub fn ab_decrypt(data: &[u8]) {
    let mut input = data;
    let Ok(header) = crate::archive::ab::read_header(&mut input) else { return };
    if let Some(info) = header.encryption.as_ref().filter(|i| i.rounds <= 16) {
        let _ = crate::archive::ab::unlock(info, header.version, b"fuzz");
    }
    let key = [0x42u8; 32];
    let iv = [0x24u8; 16];
    let mut plain = crate::cbc_stream::DecryptingReader::new(input, &key, &iv, true).padding_required();
    let _ = std::io::copy(&mut plain, &mut std::io::sink());
}

/// A snapshot's extras (src/extras.rs): the input read as an archive layout and as a list of
/// files kept without content, each to its end or its first error.
pub fn extras(data: &[u8]) {
    let mut layout = crate::extras::LayoutReader::new(data);
    while let Ok(Some(_)) = layout.next_record() {}
    let mut omitted = crate::extras::OmittedReader::new(data);
    while let Ok(Some(file)) = omitted.next_file() {
        let _ = crate::extras::omitted_line(&file);
    }
}

/// An MBFile record of an iPhone backup's Manifest.db (a binary or XML plist).
pub fn mbfile(data: &[u8]) {
    let _ = crate::source::decode_mbfile(data);
}

/// An iPhone backup's keybag (TLV records); one that parses and is cheap to derive from is
/// also unlocked, with a password that is surely wrong.
pub fn ios_keybag(data: &[u8]) {
    if let Ok(keybag) = crate::ios_crypto::parse_keybag(data) {
        if keybag.iterations <= 16 && keybag.dp_iterations <= 16 {
            let _ = keybag.unlock(b"fuzz");
        }
    }
}

/// An iPhone backup's plists: Info.plist's facts, and Manifest.plist's keys unlocked (when
/// cheap to derive).
pub fn ios_plist(data: &[u8]) {
    let Ok(top) = crate::source::parse_plist(data) else { return };
    let _ = crate::source::info_facts(&top);
    let cheap = top
        .get("BackupKeyBag")
        .and_then(|v| v.as_data())
        .and_then(|bag| crate::ios_crypto::parse_keybag(bag).ok())
        .is_some_and(|k| k.iterations <= 16 && k.dp_iterations <= 16);
    if cheap {
        let _ = crate::ios_crypto::unlock_backup(&top, || Ok::<_, ()>(b"fuzz".to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    const TARGETS: [fn(&[u8]); 16] = [
        super::tree,
        super::index_trailer,
        super::index_header,
        super::index_page,
        super::pack_trailer,
        super::pack_footer,
        super::config,
        super::snapshot_record,
        super::push_journal_line,
        super::mbfile,
        super::ios_keybag,
        super::ios_plist,
        super::tar,
        super::ab_header,
        super::ab_decrypt,
        super::extras,
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, .. ProptestConfig::default() })]

        /// A short run of what scripts/fuzz.sh does at length, on every build.
        #[test]
        fn no_decoder_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            for target in TARGETS {
                target(&data);
            }
        }
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating_them() {
        // A page claiming 2^60 entries, a footer claiming 2^32, a tree claiming 2^60 names.
        let mut page = vec![0x22; 32];
        page.extend([1, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        super::index_page(&page);
        super::pack_footer(&[0, 0, 0, 0, 0, 0, 0, 0, 0xfc, 0xff, 0xff, 0xff, 0xff]);
        super::tree(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        super::index_trailer(&[0; 8]);
        super::index_trailer(&[
            5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'P', b'B', b'I', b'D', b'X', b'E', b'N', b'D',
        ]);
        super::push_journal_line(b"61\t1.4000000000");
        // A binary plist whose offset table claims 2^60 objects.
        let mut plist = b"bplist00".to_vec();
        plist.extend([0u8; 8]);
        plist.extend([
            0, 0, 0, 0, 0, 0, 1, 1, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8,
        ]);
        super::mbfile(&plist);
    }
}
