//! `bcsim repro`: build the image set of a bcachefs issue.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use bcsim::exit;
use bcsim::repro::{Opts1107, Variant1107, build_1107};
use fs_core::error::{ErrCode, Error};

use super::CmdResult;
use super::out::outln;

/// Build the image set that reproduces a bcachefs issue (1107)
///
/// Formats the issue's layout with bcsim's own code, runs a seeded workload and cuts the power,
/// then applies the issue's damage as named steps, printing each as it is applied; the same
/// seed builds the same set. docs/REPRO-1107.md describes every step, how it arises on real
/// hardware, and what each behaviour profile does with the result. A step never writes what
/// recovery is supposed to produce.
#[derive(Args)]
pub struct ReproArgs {
    /// The bcachefs issue number: 1107 (kernel BUG at key_cache.c:475 during a degraded
    /// recovery)
    #[arg(value_name = "ISSUE")]
    issue: u32,
    /// Directory to build the image set in (created if needed; images in it are replaced)
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Journal keys the mount should read, about: the workload's length follows from it. The
    /// report's recovery read 29M keys; the default keeps the build to seconds
    #[arg(long, value_name = "N", default_value_t = 6000)]
    keys: u64,
    /// Seed of the workload and of every damage step
    #[arg(long, value_name = "S", default_value_t = 1107)]
    seed: u64,
    /// Which damage: `reported` (alloc lookups reaching a node whose header does not match the
    /// pointer, as in the report)
    #[arg(long, value_enum, default_value_t = VariantArg::Reported)]
    variant: VariantArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum VariantArg {
    Reported,
}

pub fn run(args: ReproArgs) -> CmdResult {
    if args.issue != 1107 {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!("no reproduction of issue {}: bcsim builds 1107", args.issue),
        ));
    }
    let variant = match args.variant {
        VariantArg::Reported => Variant1107::Reported,
    };
    let o = Opts1107 { dir: args.dir.clone(), keys: args.keys, seed: args.seed, variant };
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
