//! Create a small rootvg image from a TOML spec in a temporary directory,
//! then print `inspect` (human and JSON) and `check` for it.
//!
//!     cargo run -p rootvg --features std --example create_image [SPEC.toml] [IMAGE]

use std::path::PathBuf;

use rootvg::host::{check, create_image, inspect, Spec};

const SPEC: &str = r#"
vg_name = "rootvg"
device_size = "64MiB"
extent_size = "1MiB"

[[lv]]
name = "config"
size = "4MiB"

[[lv]]
name = "data"
size = "48MiB"
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec_text = match args.first() {
        Some(p) => std::fs::read_to_string(p)?,
        None => SPEC.to_string(),
    };
    let image = match args.get(1) {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = std::env::temp_dir().join(format!("rootvg-example-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            dir.join("rootvg.img")
        }
    };
    let spec = Spec::from_toml(&spec_text)?;
    create_image(&spec, &image)?;
    let info = inspect(&image)?;
    print!("{}", info);
    println!("{}", info.to_json());
    print!("{}", check(&image)?);
    Ok(())
}
