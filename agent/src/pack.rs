//! Packing an attempt's output directory as tar + zstd, streamed to a file while its
//! sha256 is computed in the same pass (the tarball is never held in memory), and the
//! streamed upload body.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// zstd level: fast, still much smaller than the raw files.
const ZSTD_LEVEL: i32 = 3;
/// Buffer between the tar builder and the compressor, and between the compressor and the
/// file: tar writes a 512-byte header and 8 KiB chunks, each a call into zstd otherwise.
const STAGE_BUFFER: usize = 1 << 20;

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

/// A packed bundle on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub path: PathBuf,
    /// Lowercase hex sha256 of the file's bytes: the artifact ID.
    pub sha256: String,
    pub size_bytes: u64,
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

/// Packs the contents of `dir` (paths relative to it) into `bundle` as tar.zst. Blocking:
/// call it from `spawn_blocking`. zstd compresses on one worker thread per core while this
/// thread builds the tar and hashes the output; zstd's multithreaded output does not depend
/// on the number of workers, so every host packs identical outputs to identical bytes.
pub fn pack_dir(dir: &Path, bundle: &Path) -> Result<Packed, PackError> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    pack_dir_with_workers(dir, bundle, u32::try_from(workers).unwrap_or(1))
}

fn pack_dir_with_workers(dir: &Path, bundle: &Path, workers: u32) -> Result<Packed, PackError> {
    let wrap = |source| PackError::Io {
        dir: dir.to_path_buf(),
        bundle: bundle.to_path_buf(),
        source,
    };
    let file = File::create(bundle).map_err(wrap)?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(STAGE_BUFFER, file),
        hasher: Sha256::new(),
        written: 0,
    };
    let mut encoder = zstd::Encoder::new(hashing, ZSTD_LEVEL).map_err(wrap)?;
    encoder.multithread(workers.max(1)).map_err(wrap)?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(STAGE_BUFFER, encoder));
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    append_sorted(&mut tar, dir, Path::new("")).map_err(wrap)?;
    let staged = tar.into_inner().map_err(wrap)?;
    let encoder = staged.into_inner().map_err(|e| wrap(e.into_error()))?;
    let mut hashing = encoder.finish().map_err(wrap)?;
    hashing.flush().map_err(wrap)?;
    let file = hashing
        .inner
        .into_inner()
        .map_err(|e| wrap(e.into_error()))?;
    file.sync_all().map_err(wrap)?;
    Ok(Packed {
        path: bundle.to_path_buf(),
        sha256: hex::encode(hashing.hasher.finalize()),
        size_bytes: hashing.written,
    })
}

/// Appends `root/rel` recursively in name order, so identical outputs give identical
/// bundles (and the store deduplicates them).
fn append_sorted<W: Write>(tar: &mut tar::Builder<W>, root: &Path, rel: &Path) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = rel.join(entry.file_name());
        let full = root.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            tar.append_dir(&name, &full)?;
            append_sorted(tar, root, &name)?;
        } else {
            tar.append_path_with_name(&full, &name)?;
        }
    }
    Ok(())
}

/// Unpacks a tar.zst bundle into `dest` (tests, and operators checking a bundle).
pub fn unpack(bundle: &Path, dest: &Path) -> io::Result<()> {
    let decoder = zstd::Decoder::new(File::open(bundle)?)?;
    tar::Archive::new(decoder).unpack(dest)
}

/// The bundle as a streamed request body (64 KiB chunks).
pub async fn upload_body(path: &Path) -> io::Result<reqwest::Body> {
    let file = tokio::fs::File::open(path).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    Ok(reqwest::Body::wrap_stream(stream))
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
        let shas: Vec<String> = [1, 2, 4]
            .into_iter()
            .map(|n| {
                let bundle = work.path().join(format!("{n}.tar.zst"));
                let packed = pack_dir_with_workers(out.path(), &bundle, n).unwrap();
                assert_eq!(packed.sha256, sha256_of(&bundle));
                packed.sha256
            })
            .collect();
        assert!(shas.iter().all(|s| *s == shas[0]), "{shas:?}");
        let dest = work.path().join("unpacked");
        unpack(&work.path().join("4.tar.zst"), &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("weights.bin")).unwrap(), big);
    }

    #[test]
    fn missing_dir_is_an_error() {
        let work = tempfile::tempdir().unwrap();
        let err = pack_dir(&work.path().join("none"), &work.path().join("x.tar.zst"));
        assert!(err.is_err());
    }
}
