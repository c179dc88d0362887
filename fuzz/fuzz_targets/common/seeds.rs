//! Seed inputs: with `SHOAL_FUZZ_SEEDS=DIR` set, a target writes its seeds to `DIR`
//! when it starts (`SHOAL_FUZZ_SEEDS=corpus/T cargo +nightly fuzz run T -- -runs=0`),
//! built with the encoders of the formats it decodes.

pub fn write(target: &str, seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("SHOAL_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    for (i, s) in seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{target}-{i:02}")), s).expect("write a seed");
    }
}
