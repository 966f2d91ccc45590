//! Man pages and shell completions generated from the command-line definitions, for the
//! Debian package (scripts/package.sh): `tenure __assets DIR` and `tenured --assets DIR` write
//! them, so they never drift from the flags the binaries accept.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Writes `DIR/man/<name>[-<sub>...].<section>` for `cmd` and every subcommand (hidden ones
/// left out), and `DIR/completions/{<name>.bash,_<name>,<name>.fish}`. Returns the files.
pub fn write(
    mut cmd: clap::Command,
    section: &'static str,
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    let man = dir.join("man");
    let comp = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    cmd.build();
    let mut files = Vec::new();
    pages(&cmd, cmd.get_name().to_owned(), section, &man, &mut files)?;
    let name = cmd.get_name().to_owned();
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, name.clone(), &mut out);
        let p = comp.join(file);
        std::fs::write(&p, out)?;
        files.push(p);
    }
    Ok(files)
}

fn pages(
    cmd: &clap::Command,
    full: String,
    section: &'static str,
    man: &Path,
    files: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    // A subcommand's page is named as man(1) conventions have it: tenure-lockspace-join(1).
    let page = cmd
        .clone()
        .name(full.clone())
        .bin_name(full.replace('-', " "));
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .section(section)
        .render(&mut out)?;
    let p = man.join(format!("{full}.{section}"));
    std::fs::write(&p, out)?;
    files.push(p);
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        pages(
            sub,
            format!("{full}-{}", sub.get_name()),
            section,
            man,
            files,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn pages_for_every_subcommand_and_three_shells() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(crate::cli::Cli::command(), "1", dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "tenure.1",
            "tenure-lockspace.1",
            "tenure-lockspace-join.1",
            "tenure-metrics.1",
            "tenure.bash",
            "_tenure",
            "tenure.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("__assets")),
            "hidden commands have no page"
        );
        let join = std::fs::read_to_string(dir.path().join("man/tenure-lockspace-join.1")).unwrap();
        assert!(join.starts_with(".ie") || join.contains(".TH"), "{join}");
        assert!(join.contains("tenure\\-lockspace\\-join"), "{join}");
        let bash = std::fs::read_to_string(dir.path().join("completions/tenure.bash")).unwrap();
        assert!(
            bash.contains("lockspace") && bash.contains("complete"),
            "{bash}"
        );
    }
}
