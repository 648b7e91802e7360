//! The fuzzing binary: `bcsim-fuzz TARGET`, run by `cargo afl fuzz` in persistent mode, feeds
//! each input to the named target of the library (docs/FUZZING.md).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = bcsim_fuzz::target(&name) else {
        let names: Vec<&str> = bcsim_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("bcsim-fuzz: unknown target '{name}' (targets: {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        (target.run)(data);
    });
}
