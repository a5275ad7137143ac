//! Golden vectors: the exact bytes docs/FORMAT.md specifies for each record, written out by
//! hand (and, for the checksums, by an independent BLAKE3), so that an encoding change that
//! would make old repositories unreadable fails here first.

use super::crypto::{MasterKeys, Sealer};
use super::index::{Header, IndexEntry, PageRef};
use super::pack::PackEntry;
use super::snapshot::{Snapshot, SnapshotStats};
use super::{decode_record, BlobKind, Id};
use crate::tree::{ChunkRef, Entry, Meta, Node, Tree};

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text.split_whitespace().collect::<String>()).expect("hex")
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encodes")
}

#[test]
fn tree_with_one_file() {
    let tree = Tree {
        entries: vec![Entry {
            name: b"a.txt".to_vec(),
            meta: Meta { mode: 0o644, uid: 1000, gid: 1000, mtime_sec: 1_700_000_000, mtime_nsec: 123_456_789 },
            node: Node::File { size: 12, chunks: vec![ChunkRef { id: Id([0x11; 32]), len: 12 }] },
        }],
    };
    let golden = unhex(
        "01 05 612e747874 fba401 fbe803 fbe803 fc00e2a7ca fc15cd5b07 00 0c 01
         1111111111111111111111111111111111111111111111111111111111111111 0c",
    );
    assert_eq!(tree.encode(), golden);
    assert_eq!(Tree::decode(&golden), Ok(tree));
}

#[test]
fn folder_and_symlink_nodes() {
    let tree = Tree {
        entries: vec![
            Entry { name: b"d".to_vec(), meta: Meta::default(), node: Node::Dir { tree: Id([0xab; 32]) } },
            Entry { name: b"l".to_vec(), meta: Meta::default(), node: Node::Symlink { target: b"../x".to_vec() } },
        ],
    };
    let golden = unhex(
        "02
         01 64 00 00 00 00 00 01 abababababababababababababababababababababababababababababababab
         01 6c 00 00 00 00 00 02 04 2e2e2f78",
    );
    assert_eq!(tree.encode(), golden);
}

#[test]
fn index_page_header_and_pack_footer() {
    let page = vec![IndexEntry { id: Id([0x22; 32]), kind: BlobKind::Data, pack: 0, offset: 8, len: 100, raw_len: 72 }];
    let page_bytes = unhex("01 2222222222222222222222222222222222222222222222222222222222222222 00 00 08 64 48");
    assert_eq!(encode(&page), page_bytes);
    assert_eq!(super::index::parse_page(&page_bytes, &Id([0x22; 32]), 1).map(|p| p.len()), Ok(1));

    let header = Header {
        packs: vec![Id([0x44; 32])],
        pages: vec![PageRef { first: Id([0x22; 32]), offset: 8, len: 128 }],
        entries: 1,
    };
    let header_bytes = unhex(
        "01 4444444444444444444444444444444444444444444444444444444444444444
         01 2222222222222222222222222222222222222222222222222222222222222222 08 80 01",
    );
    assert_eq!(encode(&header), header_bytes);
    assert!(super::index::parse_header(&header_bytes, 136).is_ok());

    let footer = vec![PackEntry { id: Id([0x33; 32]), kind: BlobKind::Tree, offset: 8, len: 300, raw_len: 251 }];
    let footer_bytes = unhex("01 3333333333333333333333333333333333333333333333333333333333333333 01 08 fb2c01 fbfb00");
    assert_eq!(encode(&footer), footer_bytes);
    assert_eq!(super::pack::parse_footer(&footer_bytes, 308), Ok(footer));
}

#[test]
fn trailers() {
    let mut index_trailer = [0u8; 20];
    index_trailer.copy_from_slice(&unhex("3000000000000000 10000000 5042494458454e44"));
    assert_eq!(super::index::parse_trailer(&index_trailer, 0x30 + 0x10 + 20), Ok((0x30, 0x10)));
    let mut pack_trailer = [0u8; 12];
    pack_trailer.copy_from_slice(&unhex("40000000 5042504b454e4431"));
    assert_eq!(super::pack::parse_trailer(&pack_trailer, 8 + 0x40 + 12), Ok(0x40));
}

#[test]
fn master_keys() {
    let keys = MasterKeys { encryption: [1; 32], blob_id: [2; 32], chunker_seed: 0x0102_0304_0506_0708 };
    let golden = unhex(
        "0101010101010101010101010101010101010101010101010101010101010101
         0202020202020202020202020202020202020202020202020202020202020202 fd 0807060504030201",
    );
    assert_eq!(encode(&keys), golden);
    let back: MasterKeys = decode_record(&golden).unwrap();
    assert_eq!((back.encryption, back.blob_id, back.chunker_seed), (keys.encryption, keys.blob_id, keys.chunker_seed));
}

#[test]
fn unencrypted_envelope_and_keyed_blob_id() {
    // BLAKE3(8-byte LE length of the aad | aad | plaintext), first 16 bytes.
    let sealed = Sealer::Plain.seal(b"abc", b"phonebak snapshot");
    assert_eq!(sealed, unhex("616263 5e3815723a859da4b7b0c92f2e55babf"));
    assert_eq!(Sealer::Plain.open(&sealed, b"phonebak snapshot").unwrap(), b"abc");
    assert!(Sealer::Plain.open(&sealed, b"phonebak pack footer").is_err());
    assert_eq!(
        blake3::keyed_hash(&[2; 32], b"hello phone").to_hex().as_str(),
        "423b7273dc36db5fe19fbf7139fbbb74afcfcada973d44e34ed9350614d8865c"
    );
}

#[test]
fn snapshot_record_json() {
    let snapshot = Snapshot {
        device: "pixel".into(),
        time_ns: 1_700_000_000_000_000_000,
        hostname: "h".into(),
        tags: vec!["t".into()],
        source: "dir:/p".into(),
        parent: None,
        root: Id([0; 32]),
        stats: SnapshotStats { files: 1, ..SnapshotStats::default() },
        facts: Default::default(),
        extras: None,
        copied_from: None,
    };
    let zeros = vec!["0"; 32].join(",");
    let golden = format!(
        "{{\"device\":\"pixel\",\"time_ns\":1700000000000000000,\"hostname\":\"h\",\"tags\":[\"t\"],\
         \"source\":\"dir:/p\",\"parent\":null,\"root\":[{zeros}],\"stats\":{{\"files\":1,\"dirs\":0,\
         \"symlinks\":0,\"bytes\":0,\"new_bytes\":0,\"added_bytes\":0,\"unreadable\":0,\"duration_ms\":0}}}}"
    );
    assert_eq!(String::from_utf8(serde_json::to_vec(&snapshot).unwrap()).unwrap(), golden);
    assert_eq!(super::snapshot::parse_record(golden.as_bytes()), Ok(snapshot));
}
