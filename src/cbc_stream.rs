//! AES-256-CBC as streams, for formats that encrypt whole files with it: iOS backups (zero IV,
//! a key per file) and Android's .ab archives (one key and IV for the whole archive).

use std::io::{self, Read, Write};

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

type Decryptor = cbc::Decryptor<aes::Aes256>;
type Encryptor = cbc::Encryptor<aes::Aes256>;

pub const BLOCK: usize = 16;

pub fn pkcs7_pad_len(last: &[u8; BLOCK]) -> Option<usize> {
    let pad = last[BLOCK - 1] as usize;
    ((1..=BLOCK).contains(&pad) && last[BLOCK - pad..].iter().all(|&b| b as usize == pad)).then_some(pad)
}

const READ_SIZE: usize = 1 << 16;

/// Bytes a reader has made ready (decrypted or encrypted), handed out in order; both readers
/// below refill it a block-aligned read at a time, reusing its buffers.
#[derive(Default)]
struct Ready {
    bytes: Vec<u8>,
    at: usize,
    done: bool,
    /// The buffer a refill reads into (kept: a fresh one per read is an allocation per read).
    input: Vec<u8>,
    /// Bytes read past the last whole block.
    partial: Vec<u8>,
}

impl Ready {
    /// Hands out what is ready, refilling first while nothing is and the stream goes on.
    fn read(&mut self, out: &mut [u8], mut refill: impl FnMut(&mut Ready) -> io::Result<()>) -> io::Result<usize> {
        while self.at == self.bytes.len() {
            if self.done {
                return Ok(0);
            }
            self.bytes.clear();
            self.at = 0;
            refill(self)?;
        }
        let n = out.len().min(self.bytes.len() - self.at);
        out[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }

    /// Reads the next piece of `inner` after the partial block kept from the last one, and
    /// splits off the new partial block: the whole blocks read, or all that is left at the end
    /// (`done`).
    fn read_blocks(&mut self, inner: &mut impl Read) -> io::Result<Vec<u8>> {
        let mut buf = std::mem::take(&mut self.input);
        buf.clear();
        buf.append(&mut self.partial);
        let start = buf.len();
        buf.resize(start + READ_SIZE, 0);
        let n = loop {
            match inner.read(&mut buf[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        buf.truncate(start + n);
        if n == 0 {
            self.done = true;
        } else {
            let whole = buf.len() / BLOCK * BLOCK;
            self.partial.extend_from_slice(&buf[whole..]);
            buf.truncate(whole);
        }
        Ok(buf)
    }
}

/// Reads AES-256-CBC ciphertext as plaintext. With `strip_padding`, a valid PKCS#7
/// padding is removed at the end (an invalid one is kept, as decrypted); a length that is not
/// whole blocks is an error at the end.
pub struct DecryptingReader<R> {
    inner: R,
    cipher: Decryptor,
    strip_padding: bool,
    /// Whether a missing or invalid padding is an error (a whole stream must have one).
    padding_required: bool,
    /// The last decrypted block, held back until it is known whether it is the last.
    held: Option<[u8; BLOCK]>,
    ready: Ready,
}

impl<R: Read> DecryptingReader<R> {
    pub fn new(inner: R, key: &[u8; 32], iv: &[u8; BLOCK], strip_padding: bool) -> Self {
        let cipher = Decryptor::new(key.into(), iv.into());
        DecryptingReader { inner, cipher, strip_padding, padding_required: false, held: None, ready: Ready::default() }
    }

    /// Makes a missing or invalid padding at the end an error, for streams that always have
    /// one (an .ab's data): there it means damage.
    pub fn padding_required(mut self) -> Self {
        self.padding_required = true;
        self
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let DecryptingReader { inner, cipher, strip_padding, padding_required, held, ready } = self;
        ready.read(out, |ready| {
            let mut buf = ready.read_blocks(inner)?;
            if ready.done {
                if !buf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "its encrypted length is not a whole number of 16-byte blocks",
                    ));
                }
                let pad = held.as_ref().and_then(pkcs7_pad_len);
                if *padding_required && pad.is_none() {
                    // Most often the stream was cut at a block's edge.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "its encryption padding is missing or damaged at the end",
                    ));
                }
                if let Some(last) = held.take() {
                    let keep = match pad {
                        Some(pad) if *strip_padding => BLOCK - pad,
                        _ => BLOCK,
                    };
                    ready.bytes.extend_from_slice(&last[..keep]);
                }
            } else {
                for block in buf.chunks_exact_mut(BLOCK) {
                    cipher.decrypt_block_mut(block.into());
                }
                ready.bytes.extend(held.take().iter().flatten());
                if let Some(last) = buf.len().checked_sub(BLOCK) {
                    *held = Some(buf[last..].try_into().expect("one block"));
                    ready.bytes.extend_from_slice(&buf[..last]);
                }
            }
            ready.input = buf;
            Ok(())
        })
    }
}

/// Reads plaintext as AES-256-CBC ciphertext, with PKCS#7 padding when `pad`.
pub struct EncryptingReader<R> {
    inner: R,
    cipher: Encryptor,
    pad: bool,
    ready: Ready,
}

impl<R: Read> EncryptingReader<R> {
    pub fn new(inner: R, key: &[u8; 32], iv: &[u8; BLOCK], pad: bool) -> Self {
        let cipher = Encryptor::new(key.into(), iv.into());
        EncryptingReader { inner, cipher, pad, ready: Ready::default() }
    }
}

impl<R: Read> Read for EncryptingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let EncryptingReader { inner, cipher, pad, ready } = self;
        ready.read(out, |ready| {
            let mut buf = ready.read_blocks(inner)?;
            if ready.done && *pad {
                let pad = BLOCK - buf.len() % BLOCK;
                buf.extend(std::iter::repeat_n(pad as u8, pad));
            } else if ready.done && !buf.len().is_multiple_of(BLOCK) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "not a whole number of blocks to encrypt"));
            }
            for block in buf.chunks_exact_mut(BLOCK) {
                cipher.encrypt_block_mut(block.into());
            }
            // The encrypted blocks are what is ready; the old ready buffer is read into next.
            ready.input = std::mem::replace(&mut ready.bytes, buf);
            Ok(())
        })
    }
}

/// Writes plaintext to `inner` as AES-256-CBC ciphertext with PKCS#7 padding, added by
/// `finish` (without it the ciphertext is cut short, and says so when read).
pub struct EncryptingWriter<W: Write> {
    inner: W,
    cipher: Encryptor,
    /// Plaintext not yet a whole block.
    partial: Vec<u8>,
    buf: Vec<u8>,
}

impl<W: Write> EncryptingWriter<W> {
    pub fn new(inner: W, key: &[u8; 32], iv: &[u8; BLOCK]) -> Self {
        let cipher = Encryptor::new(key.into(), iv.into());
        EncryptingWriter { inner, cipher, partial: Vec::with_capacity(BLOCK), buf: Vec::new() }
    }

    /// Pads and writes the last block; gives back the writer underneath.
    pub fn finish(mut self) -> io::Result<W> {
        let pad = BLOCK - self.partial.len();
        self.partial.extend(std::iter::repeat_n(pad as u8, pad));
        let mut block = std::mem::take(&mut self.partial);
        self.cipher.encrypt_block_mut(block.as_mut_slice().into());
        self.inner.write_all(&block)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.clear();
        self.buf.extend_from_slice(&self.partial);
        let whole = (self.partial.len() + data.len()) / BLOCK * BLOCK;
        let taken = whole - self.partial.len().min(whole);
        if whole == 0 {
            self.partial.extend_from_slice(data);
            return Ok(data.len());
        }
        self.buf.extend_from_slice(&data[..taken]);
        for block in self.buf.chunks_exact_mut(BLOCK) {
            self.cipher.encrypt_block_mut(block.into());
        }
        self.inner.write_all(&self.buf)?;
        self.partial.clear();
        self.partial.extend_from_slice(&data[taken..]);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ios_crypto::plain_len;

    #[test]
    fn the_writer_gives_what_the_reader_gives_in_any_pieces() {
        let key = [9u8; 32];
        let iv = [3u8; BLOCK];
        for len in [0, 1, 15, 16, 17, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let mut expected = Vec::new();
            EncryptingReader::new(&plain[..], &key, &iv, true).read_to_end(&mut expected).unwrap();
            for piece in [1, 5, 16, 33, 4096] {
                let mut writer = EncryptingWriter::new(Vec::new(), &key, &iv);
                for part in plain.chunks(piece) {
                    writer.write_all(part).unwrap();
                }
                assert_eq!(writer.finish().unwrap(), expected, "{len} bytes in pieces of {piece}");
            }
        }
    }

    fn roundtrip(len: usize, chunk: usize) {
        let key = [7u8; 32];
        let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut cipher = Vec::new();
        EncryptingReader::new(&plain[..], &key, &[0; BLOCK], true).read_to_end(&mut cipher).unwrap();
        assert_eq!(cipher.len(), (len / BLOCK + 1) * BLOCK);
        let tail = &cipher[cipher.len().saturating_sub(32)..];
        assert_eq!(plain_len(&key, cipher.len() as u64, tail), Some(len as u64));
        // Hand the ciphertext over in odd pieces, as a pipe would.
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.1.min(out.len()).min(self.0.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut back = Vec::new();
        DecryptingReader::new(Trickle(&cipher, chunk), &key, &[0; BLOCK], true).read_to_end(&mut back).unwrap();
        assert_eq!(back, plain);
        let mut raw = Vec::new();
        DecryptingReader::new(&cipher[..], &key, &[0; BLOCK], false).read_to_end(&mut raw).unwrap();
        let mut again = Vec::new();
        EncryptingReader::new(&raw[..], &key, &[0; BLOCK], false).read_to_end(&mut again).unwrap();
        assert_eq!(again, cipher, "decrypting without unpadding and encrypting again gives the same bytes");
    }

    #[test]
    fn cbc_streams_round_trip_at_every_boundary() {
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 65535, 65536, 65537, 200_000] {
            for chunk in [1, 7, 16, 70_000] {
                if len > 70_000 && chunk < 16 {
                    continue;
                }
                roundtrip(len, chunk);
            }
        }
    }

    #[test]
    fn a_cut_short_ciphertext_is_an_error_and_bad_padding_is_kept() {
        let key = [1u8; 32];
        let mut cipher = Vec::new();
        EncryptingReader::new(&[0x20u8; 40][..], &key, &[0; BLOCK], true).read_to_end(&mut cipher).unwrap();
        let mut out = Vec::new();
        let err = DecryptingReader::new(&cipher[..cipher.len() - 3], &key, &[0; BLOCK], true)
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Cut at a block boundary: the last block is not padding, so all of it is kept.
        let mut out = Vec::new();
        DecryptingReader::new(&cipher[..32], &key, &[0; BLOCK], true).read_to_end(&mut out).unwrap();
        assert_eq!(out, vec![0x20u8; 32]);
        assert_eq!(plain_len(&key, 32, &cipher[..32]), None);
    }
}
