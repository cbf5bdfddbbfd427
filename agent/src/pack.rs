//! Packing an attempt's output directory as tar + zstd, its sha256 computed in the same
//! pass, and the upload body.
//!
//! A small output (a tar stream under [`SMALL_OUTPUT`]) is packed in memory by one thread:
//! nothing is written to disk and no compression workers start, which is most of the cost
//! of a tiny artifact. A larger one streams to a file (never held in memory) with zstd's
//! multithreaded encoder. Which path is taken depends only on the output's contents, so
//! identical outputs still pack to identical bundles on every host.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// zstd level: fast, still much smaller than the raw files.
const ZSTD_LEVEL: i32 = 3;
/// Buffer between the tar builder and the compressor, and between the compressor and the
/// file: tar writes a 512-byte header and 8 KiB chunks, each a call into zstd otherwise.
const STAGE_BUFFER: usize = 1 << 20;
/// Outputs whose tar stream is smaller than this are packed in memory by one thread
/// (below zstd's multithreaded job size, extra workers would have nothing to do).
pub const SMALL_OUTPUT: u64 = 1 << 20;
/// Size of a tar block: headers and file contents are padded to it.
const TAR_BLOCK: u64 = 512;

/// Why packing failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading the output dir or writing the bundle failed.
    #[error("packing {dir} into {bundle}: {source}")]
    Io {
        dir: PathBuf,
        bundle: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where a packed bundle's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleBytes {
    /// A file on disk (large outputs).
    File(PathBuf),
    /// In memory (small outputs): nothing was written to disk.
    Memory(Bytes),
}

/// A packed bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub bytes: BundleBytes,
    /// Lowercase hex sha256 of the bundle's bytes: the artifact ID.
    pub sha256: String,
    pub size_bytes: u64,
}

impl Packed {
    /// The bundle as an upload body; a retry asks for a new one.
    pub async fn body(&self) -> io::Result<reqwest::Body> {
        match &self.bytes {
            BundleBytes::File(path) => upload_body(path).await,
            BundleBytes::Memory(bytes) => Ok(reqwest::Body::from(bytes.clone())),
        }
    }
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One entry of the output directory, relative to it.
struct Entry {
    name: PathBuf,
    is_dir: bool,
}

/// The output's entries in name order (so identical outputs give identical bundles and
/// the store deduplicates them) and the size of their tar stream.
fn list_sorted(root: &Path) -> io::Result<(Vec<Entry>, u64)> {
    let mut entries = Vec::new();
    let mut tar_size = 2 * TAR_BLOCK; // the end-of-archive marker
    collect_sorted(root, Path::new(""), &mut entries, &mut tar_size)?;
    Ok((entries, tar_size))
}

fn collect_sorted(
    root: &Path,
    rel: &Path,
    out: &mut Vec<Entry>,
    tar_size: &mut u64,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        // A header per entry (long names take one more, which only moves the estimate).
        *tar_size = tar_size.saturating_add(TAR_BLOCK);
        if kind.is_dir() {
            out.push(Entry {
                name: name.clone(),
                is_dir: true,
            });
            collect_sorted(root, &name, out, tar_size)?;
        } else {
            if kind.is_file() {
                let len = entry.metadata()?.len();
                *tar_size = tar_size.saturating_add(len.div_ceil(TAR_BLOCK) * TAR_BLOCK);
            }
            out.push(Entry {
                name,
                is_dir: false,
            });
        }
    }
    Ok(())
}

fn append_all<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    entries: &[Entry],
) -> io::Result<()> {
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    for entry in entries {
        let full = root.join(&entry.name);
        if entry.is_dir {
            tar.append_dir(&entry.name, &full)?;
        } else {
            tar.append_path_with_name(&full, &entry.name)?;
        }
    }
    tar.finish()
}

/// Packs the contents of `dir` (paths relative to it) as tar.zst: in memory when the
/// output is small, else streamed into `bundle` (see the module docs). Blocking: call it
/// from `spawn_blocking`.
pub fn pack_output(dir: &Path, bundle: &Path) -> Result<Packed, PackError> {
    let wrap = |source| PackError::Io {
        dir: dir.to_path_buf(),
        bundle: bundle.to_path_buf(),
        source,
    };
    let (entries, tar_size) = list_sorted(dir).map_err(wrap)?;
    if tar_size < SMALL_OUTPUT {
        pack_in_memory(dir, &entries, tar_size).map_err(wrap)
    } else {
        pack_to_file(dir, &entries, bundle, default_workers()).map_err(wrap)
    }
}

/// Packs the contents of `dir` into the file `bundle` as tar.zst, with the same bytes as
/// [`pack_output`]. Blocking: call it from `spawn_blocking`. A large output is compressed
/// by zstd on one worker thread per core while this thread builds the tar and hashes the
/// output; zstd's multithreaded output does not depend on the number of workers, so every
/// host packs identical outputs to identical bytes.
pub fn pack_dir(dir: &Path, bundle: &Path) -> Result<Packed, PackError> {
    let packed = pack_output(dir, bundle)?;
    let BundleBytes::Memory(bytes) = &packed.bytes else {
        return Ok(packed);
    };
    std::fs::write(bundle, bytes).map_err(|source| PackError::Io {
        dir: dir.to_path_buf(),
        bundle: bundle.to_path_buf(),
        source,
    })?;
    Ok(Packed {
        bytes: BundleBytes::File(bundle.to_path_buf()),
        ..packed
    })
}

fn default_workers() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores).unwrap_or(1).max(1)
}

/// The tar stream built in memory, then compressed in one call: with its size known, zstd
/// sizes its tables to the input (a streaming encoder sets up and clears tables for
/// megabytes, most of a tiny bundle's cost). Hashed once at the end.
fn pack_in_memory(dir: &Path, entries: &[Entry], tar_size: u64) -> io::Result<Packed> {
    let capacity = usize::try_from(tar_size).unwrap_or(64 * 1024);
    let mut tar = tar::Builder::new(Vec::with_capacity(capacity));
    append_all(&mut tar, dir, entries)?;
    let bytes = zstd::bulk::compress(&tar.into_inner()?, ZSTD_LEVEL)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Packed {
        size_bytes: bytes.len() as u64,
        bytes: BundleBytes::Memory(Bytes::from(bytes)),
        sha256,
    })
}

/// Streams tar.zst into `bundle`, hashing in the same pass, compressing on `workers`
/// threads. The file is not fsynced: it is scratch that only lives until the upload, and a
/// crash of the agent loses the job's lease anyway (the server fsyncs what it stores).
fn pack_to_file(dir: &Path, entries: &[Entry], bundle: &Path, workers: u32) -> io::Result<Packed> {
    let file = File::create(bundle)?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(STAGE_BUFFER, file),
        hasher: Sha256::new(),
        written: 0,
    };
    let mut encoder = zstd::Encoder::new(hashing, ZSTD_LEVEL)?;
    encoder.multithread(workers.max(1))?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(STAGE_BUFFER, encoder));
    append_all(&mut tar, dir, entries)?;
    let staged = tar.into_inner()?;
    let encoder = staged.into_inner().map_err(|e| e.into_error())?;
    let mut hashing = encoder.finish()?;
    hashing.flush()?;
    Ok(Packed {
        bytes: BundleBytes::File(bundle.to_path_buf()),
        sha256: hex::encode(hashing.hasher.finalize()),
        size_bytes: hashing.written,
    })
}

/// Unpacks a tar.zst bundle into `dest` (tests, and operators checking a bundle).
pub fn unpack(bundle: &Path, dest: &Path) -> io::Result<()> {
    let decoder = zstd::Decoder::new(File::open(bundle)?)?;
    tar::Archive::new(decoder).unpack(dest)
}

/// Bytes per chunk of a streamed upload body.
const UPLOAD_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the socket.
const UPLOAD_READ_AHEAD: usize = 4;

/// The bundle file as a streamed request body: one blocking thread reads it in 1 MiB
/// chunks a few ahead of the socket (a `tokio::fs::File` would hop to the blocking pool for
/// every small read). Dropping the body stops the reader.
pub async fn upload_body(path: &Path) -> io::Result<reqwest::Body> {
    Ok(reqwest::Body::wrap_stream(file_chunks(path).await?))
}

/// The file's bytes as a stream of chunks read ahead by a blocking thread.
async fn file_chunks(
    path: &Path,
) -> io::Result<impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static> {
    let path = path.to_path_buf();
    let file = tokio::task::spawn_blocking(move || File::open(path))
        .await
        .map_err(io::Error::other)??;
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(UPLOAD_READ_AHEAD);
    tokio::task::spawn_blocking(move || read_chunks(file, &tx));
    Ok(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }))
}

/// Sends `file` in chunks until its end, an error, or the receiver is gone.
fn read_chunks(file: File, tx: &tokio::sync::mpsc::Sender<io::Result<Bytes>>) {
    use std::io::Read;
    let mut file = file;
    loop {
        let mut chunk = Vec::with_capacity(UPLOAD_CHUNK);
        match (&mut file)
            .take(UPLOAD_CHUNK as u64)
            .read_to_end(&mut chunk)
        {
            Ok(0) => return,
            Ok(_) => {
                if tx.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_of(path: &Path) -> String {
        let mut h = Sha256::new();
        io::copy(&mut File::open(path).unwrap(), &mut h).unwrap();
        hex::encode(h.finalize())
    }

    #[test]
    fn pack_unpack_round_trip_with_matching_sha256() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("model.json"), b"{\"w\": [1, 2, 3]}").unwrap();
        std::fs::create_dir_all(out.path().join("sub/deeper")).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(out.path().join("sub/deeper/weights.bin"), &big).unwrap();
        std::fs::create_dir_all(out.path().join("empty")).unwrap();

        let work = tempfile::tempdir().unwrap();
        let bundle = work.path().join("bundle.tar.zst");
        let packed = pack_dir(out.path(), &bundle).unwrap();
        assert_eq!(packed.sha256, sha256_of(&bundle));
        assert_eq!(packed.size_bytes, std::fs::metadata(&bundle).unwrap().len());

        let dest = work.path().join("unpacked");
        unpack(&bundle, &dest).unwrap();
        assert_eq!(
            std::fs::read(dest.join("model.json")).unwrap(),
            b"{\"w\": [1, 2, 3]}"
        );
        assert_eq!(
            std::fs::read(dest.join("sub/deeper/weights.bin")).unwrap(),
            big
        );
        assert!(dest.join("empty").is_dir());
    }

    #[test]
    fn identical_outputs_pack_to_identical_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::write(d.join("z.txt"), b"z").unwrap();
            std::fs::write(d.join("a.txt"), b"a").unwrap();
        }
        let work = tempfile::tempdir().unwrap();
        let pa = pack_dir(a.path(), &work.path().join("a.tar.zst")).unwrap();
        let pb = pack_dir(b.path(), &work.path().join("b.tar.zst")).unwrap();
        assert_eq!(pa.sha256, pb.sha256);
    }

    #[test]
    fn the_bundle_does_not_depend_on_the_number_of_compression_workers() {
        let out = tempfile::tempdir().unwrap();
        // Several MiB, so zstd splits it into more than one job.
        let big: Vec<u8> = (0..6_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(out.path().join("weights.bin"), &big).unwrap();
        std::fs::write(
            out.path().join("log.txt"),
            "epoch 1 loss 0.5\n".repeat(50_000),
        )
        .unwrap();
        let work = tempfile::tempdir().unwrap();
        let (entries, _) = list_sorted(out.path()).unwrap();
        let shas: Vec<String> = [1, 2, 4]
            .into_iter()
            .map(|n| {
                let bundle = work.path().join(format!("{n}.tar.zst"));
                let packed = pack_to_file(out.path(), &entries, &bundle, n).unwrap();
                assert_eq!(packed.sha256, sha256_of(&bundle));
                packed.sha256
            })
            .collect();
        assert!(shas.iter().all(|s| *s == shas[0]), "{shas:?}");
        let packed = pack_output(out.path(), &work.path().join("out.tar.zst")).unwrap();
        assert_eq!(packed.sha256, shas[0]);
        assert!(matches!(packed.bytes, BundleBytes::File(_)));
        let dest = work.path().join("unpacked");
        unpack(&work.path().join("4.tar.zst"), &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("weights.bin")).unwrap(), big);
    }

    #[test]
    fn a_small_output_is_packed_in_memory_to_the_same_bytes_as_the_file() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("result.txt"), b"done\n").unwrap();
        std::fs::create_dir_all(out.path().join("sub")).unwrap();
        std::fs::write(out.path().join("sub/metrics.json"), b"{\"loss\": 0.1}").unwrap();
        let work = tempfile::tempdir().unwrap();
        let not_written = work.path().join("memory.tar.zst");
        let packed = pack_output(out.path(), &not_written).unwrap();
        let BundleBytes::Memory(bytes) = &packed.bytes else {
            panic!("a small output should stay in memory: {packed:?}");
        };
        assert!(!not_written.exists());
        assert_eq!(packed.size_bytes, bytes.len() as u64);
        assert_eq!(packed.sha256, hex::encode(Sha256::digest(bytes)));
        let file = work.path().join("file.tar.zst");
        assert_eq!(pack_dir(out.path(), &file).unwrap().sha256, packed.sha256);
        std::fs::write(&not_written, bytes).unwrap();
        let dest = work.path().join("unpacked");
        unpack(&not_written, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("result.txt")).unwrap(), b"done\n");
        assert_eq!(
            std::fs::read(dest.join("sub/metrics.json")).unwrap(),
            b"{\"loss\": 0.1}"
        );
    }

    #[tokio::test]
    async fn the_upload_stream_reads_the_whole_file() {
        use futures_util::StreamExt;
        let work = tempfile::tempdir().unwrap();
        let path = work.path().join("bundle.bin");
        // More than two chunks, not a multiple of the chunk size.
        let data: Vec<u8> = (0..(2 * UPLOAD_CHUNK + 12_345))
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let mut stream = std::pin::pin!(file_chunks(&path).await.unwrap());
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, data);
    }

    #[test]
    fn missing_dir_is_an_error() {
        let work = tempfile::tempdir().unwrap();
        let err = pack_dir(&work.path().join("none"), &work.path().join("x.tar.zst"));
        assert!(err.is_err());
    }
}
