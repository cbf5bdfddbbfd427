//! Figure 5: artifacts. A 1 GiB upload through `PUT /v1/model/{id}` against the disk's
//! sequential write speed measured in the same run (`dd ... conv=fsync`), and the server's
//! RSS growth during the upload. The agent's tar.zst packing against `tar --zstd` needs
//! the agent's packer.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cis490_api::ClaimRequest;

use super::proc_stats::rss_mib;
use super::server::BenchServer;
use super::workload::{capability, manifest_text, worker};
use super::{Ctx, Row};

/// Bytes/s of `dd if=/dev/zero of=FILE bs=1M count=MIB conv=fsync` (timed here).
/// Note: the upload figure is measured with the agent's own body stream (1 MiB chunks read
/// ahead by one thread); a `reqwest::Body` made from a `tokio::fs::File` reads 8 KiB per
/// blocking-pool hop and capped the upload near 70 MB/s on the client side.
fn dd_speed(path: &Path, mib: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let status = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fsync")
        .stderr(std::process::Stdio::null())
        .status()
        .context("running dd")?;
    if !status.success() {
        bail!("dd failed: {status}");
    }
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    Ok((mib as f64 * 1024.0 * 1024.0) / secs)
}

/// A file of `mib` MiB of incompressible bytes (xorshift), and its sha256. It is fsynced,
/// so that its own writeback does not compete with what is measured after it.
fn payload(path: &Path, mib: usize) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        hasher.update(&block);
        file.write_all(&block)?;
    }
    file.flush()?;
    file.get_ref().sync_all()?;
    Ok(hex::encode(hasher.finalize()))
}

pub async fn run(ctx: &Ctx, server_missing: Option<&str>) -> Vec<Row> {
    let speed_name = "5. artifacts: upload speed / dd conv=fsync";
    let rss_name = "5. artifacts: server RSS growth during upload";
    let pack_name = "5. artifacts: agent tar.zst packing vs tar --zstd";
    let mut rows = Vec::new();
    if let Some(why) = server_missing {
        rows.push(Row::not_measured(speed_name, ">= 70%", why));
        rows.push(Row::not_measured(rss_name, "<= 32 MiB", why));
    } else {
        let result = upload(ctx).await;
        match result {
            Ok((fraction, growth_mib, detail)) => {
                let mut row = Row::measured(
                    ctx,
                    speed_name,
                    ">= 70%",
                    fraction * 100.0,
                    "%",
                    fraction >= 0.7,
                );
                row.measured = format!("{} ({detail})", row.measured);
                rows.push(row);
                rows.push(Row::measured(
                    ctx,
                    rss_name,
                    "<= 32 MiB",
                    growth_mib,
                    "MiB",
                    growth_mib <= 32.0,
                ));
            }
            Err(e) => rows.push(Row::error(speed_name, ">= 70%", &e)),
        }
    }
    match packing(ctx) {
        Ok((ratio, detail)) => {
            let mut row = Row::measured(ctx, pack_name, ">= 1.0x", ratio, "x", ratio >= 1.0);
            row.measured = format!("{} ({detail})", row.measured);
            rows.push(row);
        }
        Err(e) => rows.push(Row::error(pack_name, ">= 1.0x", &e)),
    }
    rows
}

/// A trainer-like output directory of about `mib` MiB: a model file of incompressible
/// weights, a text log of numbers (compressible), and a small JSON.
fn output_dir(dir: &Path, mib: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    payload(&dir.join("model.bin"), mib / 2)?;
    let mut log = std::io::BufWriter::new(std::fs::File::create(dir.join("train.log"))?);
    let mut written = 0usize;
    let mut i = 0u64;
    while written < (mib / 2) << 20 {
        let line = format!(
            "epoch {} step {i} loss {:.6} acc {:.4}\n",
            i / 1000,
            1.0 / (1.0 + i as f64 / 500.0),
            (i % 997) as f64 / 997.0
        );
        log.write_all(line.as_bytes())?;
        written += line.len();
        i += 1;
    }
    log.flush()?;
    std::fs::write(
        dir.join("metrics.json"),
        "{\"accuracy\": 0.91, \"f1\": 0.88}\n",
    )?;
    Ok(())
}

/// Returns (tar --zstd time / agent packing time, detail). Each is run three times,
/// alternating, and its fastest run kept (the first warms the page cache for both).
fn packing(ctx: &Ctx) -> anyhow::Result<(f64, String)> {
    let mib = ctx.size(256, 8);
    let dir = ctx.dir("packing")?;
    let out = dir.join("out");
    output_dir(&out, mib)?;
    let mut agent = f64::INFINITY;
    let mut tar = f64::INFINITY;
    for _ in 0..3 {
        let bundle = dir.join("agent.tar.zst");
        let start = Instant::now();
        cis490_agent::pack::pack_dir(&out, &bundle)?;
        agent = agent.min(start.elapsed().as_secs_f64());
        let tarball = dir.join("tar.tar.zst");
        let start = Instant::now();
        let status = Command::new("tar")
            .arg("--zstd")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(&out)
            .arg(".")
            .status()
            .context("running tar --zstd")?;
        if !status.success() {
            bail!("tar --zstd failed: {status}");
        }
        tar = tar.min(start.elapsed().as_secs_f64());
    }
    let detail = format!(
        "agent {:.0} ms vs tar --zstd {:.0} ms for {mib} MiB",
        agent * 1000.0,
        tar * 1000.0
    );
    Ok((tar / agent, detail))
}

/// Returns (upload speed / dd speed, server RSS growth MiB, a detail string).
async fn upload(ctx: &Ctx) -> anyhow::Result<(f64, f64, String)> {
    let mib = ctx.size(1024, 32);
    let dir = ctx.dir("artifacts")?;
    // Best of two: the disk's speed, not one unlucky moment on a shared machine.
    let dd = dd_speed(&dir.join("dd.bin"), mib)?.max(dd_speed(&dir.join("dd.bin"), mib)?);
    let data = dir.join("bundle.tar.zst");
    let sha = payload(&data, mib)?;
    let server = BenchServer::start(&dir, &manifest_text(1, 1, &["true"], 0))?;
    let client = server.client()?;
    let req = ClaimRequest {
        worker: worker(0)?,
        capability: capability(0),
    };
    let claim = client
        .claim(&req, Some(Duration::from_secs(10)))
        .await?
        .context("no job to upload for")?;
    let pid = server.pid();
    let before = rss_mib(pid)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = rss_mib(pid) {
                    peak = peak.max(r);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    // The agent's own upload body, so the figure is what an agent sees (opening the file
    // and reading ahead are part of the time).
    let start = Instant::now();
    let body = cis490_agent::pack::upload_body(&data).await?;
    let answer = client
        .upload(&claim.job.id, &req.worker, &claim.lease, &sha, body)
        .await;
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("RSS sampler panicked"))?;
    let answer = answer?;
    if answer.size_bytes != (mib as u64) << 20 {
        bail!(
            "the server stored {} bytes, sent {}",
            answer.size_bytes,
            mib << 20
        );
    }
    let speed = (mib as f64 * 1024.0 * 1024.0) / secs;
    let detail = format!("{:.0} MB/s vs dd {:.0} MB/s", speed / 1e6, dd / 1e6);
    Ok((speed / dd, (peak - before).max(0.0), detail))
}
