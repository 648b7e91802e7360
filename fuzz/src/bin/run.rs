//! `bcsim-fuzz-run TARGET FILE...`: runs a fuzz target on inputs (a campaign's crashes, say)
//! without the fuzzer, one after the other, so that a failing input's panic message and
//! backtrace can be read.

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let Some(target) = bcsim_fuzz::target(&name) else {
        let names: Vec<&str> = bcsim_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("usage: bcsim-fuzz-run TARGET FILE... (targets: {})", names.join(", "));
        std::process::exit(2);
    };
    for file in args {
        match std::fs::read(&file) {
            Ok(data) => {
                eprintln!("{file}: {} bytes", data.len());
                (target.run)(&data);
            }
            Err(e) => {
                eprintln!("bcsim-fuzz-run: cannot read {file}: {e}");
                std::process::exit(8);
            }
        }
    }
}
