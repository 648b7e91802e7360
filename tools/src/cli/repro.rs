//! `bcsim repro`: build the image set of a bcachefs issue.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use bcsim::exit;
use bcsim::recovery::progress::Progress;
use bcsim::repro::{Opts1107, Opts1108, Variant1107, Variant1108, build_1107, build_1108};
use fs_core::error::{ErrCode, Error};

use super::CmdResult;
use super::out::outln;

/// Build the image set that reproduces a bcachefs issue (1107 or 1108)
///
/// Formats the issue's layout with bcsim's own code, runs it as a filesystem (a seeded workload,
/// then the issue's own steps), cuts the power, and for 1107 applies the issue's damage; every
/// step is printed as it is applied, and the same seed builds the same set. docs/REPRO-1107.md
/// and docs/REPRO-1108.md describe every step, how it arises on real hardware, and what each
/// behaviour profile does with the result. A step never writes what recovery is supposed to
/// produce.
#[derive(Args)]
pub struct ReproArgs {
    /// The bcachefs issue number: 1107 (kernel BUG at key_cache.c:475 during a degraded
    /// recovery) or 1108 (allocator stuck in journal replay on the NVMe metadata pair)
    #[arg(value_name = "ISSUE")]
    issue: u32,
    /// Directory to build the image set in (created if needed; images in it are replaced)
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// 1107: journal keys the mount should read, about: the workload's length follows from it
    /// (600000 builds in about 30 s into about 3 GB of image space; a build that would not fit
    /// is refused first). Past 336000 the workload does only some of its fsyncs, so that its
    /// journal stays under the 16384 entries reclaim keeps. The report's recovery read 29M
    /// keys; the default keeps the build to seconds
    #[arg(long, value_name = "N", default_value_t = 6000)]
    keys: u64,
    /// 1108: divide every size and bucket count by N (1: the report's figures, about 15 s to
    /// build; tests use 16)
    #[arg(long, value_name = "N", default_value_t = 1)]
    scale: u64,
    /// Seed of the workload and of every step (default: the issue number)
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Which set: 1107 `reported` (alloc lookups reaching a node whose header does not match
    /// the pointer); 1108 `reported` (need_discard buckets emptied before the journal's last
    /// reclaim, so discards in recovery can free them) or `no-discard` (emptied inside the
    /// replayed range: only fewer metadata replicas help)
    #[arg(long, value_enum, default_value_t = VariantArg::Reported)]
    variant: VariantArg,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VariantArg {
    Reported,
    NoDiscard,
}

pub fn run(args: ReproArgs) -> CmdResult {
    match args.issue {
        1107 => run_1107(args),
        1108 => run_1108(args),
        n => Err(Error::new(
            ErrCode::InvalidArgument,
            format!("no reproduction of issue {n}: bcsim builds 1107 and 1108"),
        )),
    }
}

fn run_1107(args: ReproArgs) -> CmdResult {
    let variant = match args.variant {
        VariantArg::Reported => Variant1107::Reported,
        VariantArg::NoDiscard => {
            return Err(Error::new(ErrCode::InvalidArgument, "--variant no-discard is a variant of 1108"));
        }
    };
    let o = Opts1107 {
        dir: args.dir.clone(),
        keys: args.keys,
        seed: args.seed.unwrap_or(1107),
        variant,
        progress: Progress::stderr(),
    };
    outln!(
        "bcsim repro 1107 --variant {} --seed {} --keys {}: building in {}",
        variant.name(),
        o.seed,
        o.keys,
        o.dir.display()
    );
    let mut n = 0;
    let built = build_1107(&o, &mut |s| {
        n += 1;
        outln!("step {n} {}: {}", s.name, s.detail);
    })?;
    let images: Vec<String> = built.images.iter().map(|p| p.display().to_string()).collect();
    outln!("\nbuilt {} member images; one member is absent, so mount needs -o degraded:", images.len());
    outln!("  bcsim mount -o degraded,behavior=v1.37.5 {}", images.join(" "));
    Ok(exit::OK)
}

fn run_1108(args: ReproArgs) -> CmdResult {
    let variant = match args.variant {
        VariantArg::Reported => Variant1108::Reported,
        VariantArg::NoDiscard => Variant1108::NoDiscard,
    };
    let o = Opts1108 { dir: args.dir.clone(), scale: args.scale, seed: args.seed.unwrap_or(1108), variant };
    outln!(
        "bcsim repro 1108 --variant {} --seed {} --scale {}: building in {}",
        variant.name(),
        o.seed,
        o.scale,
        o.dir.display()
    );
    let mut n = 0;
    let built = build_1108(&o, &mut |s| {
        n += 1;
        outln!("step {n} {}: {}", s.name, s.detail);
    })?;
    let images: Vec<String> = built.images.iter().map(|p| p.display().to_string()).collect();
    outln!("\nbuilt {} member images; the reporter's kernel hangs in journal replay:", images.len());
    outln!("  bcsim mount -o behavior=v1.37.5 {}", images.join(" "));
    Ok(exit::OK)
}
