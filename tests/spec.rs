//! Spec layering and spec errors.

use std::fs;
use std::path::Path;

use ebmlab::spec::{load_spec_with_env, Spec};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn load(file: &Path, sets: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Spec> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    load_spec_with_env(file, &sets, env).map(|l| l.spec)
}

#[test]
fn each_layer_overrides_the_one_below() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "base.toml",
        "name = \"base\"\n[train]\niterations = 10\nlr = 0.5\nbatch_size = 7\n[eval]\nepisodes = 3\n",
    );
    let child = write(
        dir.path(),
        "child.toml",
        "extends = \"base.toml\"\nname = \"child\"\n[train]\niterations = 20\nbatch_size = 8\n",
    );
    let env = [
        ("EBMLAB_TRAIN__ITERATIONS", "30"),
        ("EBMLAB_EVAL__EPISODES", "4"),
    ];

    let all = load(&child, &["train.iterations=40"], &env).unwrap();
    assert_eq!(all.train.iterations, 40, "--set beats everything");
    assert_eq!(all.eval.episodes, 4, "environment beats the files");
    assert_eq!(all.train.batch_size, 8, "the file beats its base");
    assert_eq!(all.train.lr, 0.5, "the base beats the defaults");
    assert_eq!(all.train.lr_decay_rate, 0.99, "defaults fill the rest");
    assert_eq!(all.name, "child");

    assert_eq!(load(&child, &[], &env).unwrap().train.iterations, 30);
    assert_eq!(load(&child, &[], &[]).unwrap().train.iterations, 20);
    assert_eq!(
        load(&dir.path().join("base.toml"), &[], &[])
            .unwrap()
            .train
            .iterations,
        10
    );
    // Unrelated variables and the log filter are not spec keys.
    let other = [("HOME", "/root"), ("EBMLAB_LOG", "debug")];
    assert_eq!(load(&child, &[], &other).unwrap().train.iterations, 20);
    // --set parses TOML values, strings bare or quoted.
    let s = load(
        &child,
        &[
            "policy.kind=mse",
            "data.path=\"demos\"",
            "train.negatives.kind=uniform",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        (s.policy.kind.as_str(), s.data.path.as_deref()),
        ("mse", Some("demos"))
    );
}

fn error_of(file: &Path, sets: &[&str], env: &[(&str, &str)]) -> String {
    format!(
        "{:#}",
        load(file, sets, env).expect_err("should be refused")
    )
}

/// (name, spec file, --set items, environment, parts the error must contain)
type ErrorCase<'a> = (
    &'a str,
    std::path::PathBuf,
    Vec<&'a str>,
    Vec<(&'a str, &'a str)>,
    Vec<String>,
);

#[test]
fn spec_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<ErrorCase> = vec![
        (
            "unknown key",
            write(d, "typo.toml", "name = \"x\"\n[train]\niteratons = 5\n"),
            vec![],
            vec![],
            vec![
                "typo.toml".into(),
                "unknown key `train.iteratons`".into(),
                "iterations".into(),
            ],
        ),
        (
            "unknown nested key",
            write(
                d,
                "typo2.toml",
                "name = \"x\"\n[train.negatives]\ncuont = 5\n",
            ),
            vec![],
            vec![],
            vec!["typo2.toml".into(), "`train.negatives.cuont`".into()],
        ),
        (
            "unknown section",
            write(d, "section.toml", "name = \"x\"\n[trian]\niterations = 5\n"),
            vec![],
            vec![],
            vec!["section.toml".into(), "`trian`".into()],
        ),
        (
            "unknown task key",
            write(d, "task.toml", "name = \"x\"\n[task]\nndim = 3\n"),
            vec![],
            vec![],
            vec!["task.toml".into(), "`task.ndim`".into()],
        ),
        (
            "wrong type",
            write(
                d,
                "type.toml",
                "name = \"x\"\n[train]\niterations = \"many\"\n",
            ),
            vec![],
            vec![],
            vec![
                "type.toml".into(),
                "key `train.iterations`".into(),
                "invalid type".into(),
            ],
        ),
        (
            "not TOML",
            write(d, "broken.toml", "name = \n"),
            vec![],
            vec![],
            vec!["broken.toml".into(), "not valid TOML".into()],
        ),
        (
            "missing file",
            d.join("nowhere.toml"),
            vec![],
            vec![],
            vec!["nowhere.toml".into(), "not found".into()],
        ),
        (
            "missing base",
            write(d, "orphan.toml", "extends = \"gone.toml\"\nname = \"x\"\n"),
            vec![],
            vec![],
            vec!["orphan.toml".into(), "gone.toml".into(), "extends".into()],
        ),
        (
            "unknown key in the base",
            {
                write(d, "badbase.toml", "name = \"b\"\n[eval]\nepisdoes = 1\n");
                write(d, "good.toml", "extends = \"badbase.toml\"\nname = \"g\"\n")
            },
            vec![],
            vec![],
            vec!["badbase.toml".into(), "`eval.episdoes`".into()],
        ),
        (
            "cyclic extends",
            {
                write(d, "a.toml", "extends = \"b.toml\"\nname = \"a\"\n");
                write(d, "b.toml", "extends = \"a.toml\"\nname = \"b\"\n")
            },
            vec![],
            vec![],
            vec!["cyclic".into(), "a.toml".into(), "b.toml".into()],
        ),
        (
            "unknown --set key",
            write(d, "ok.toml", "name = \"ok\"\n"),
            vec!["train.iters=3"],
            vec![],
            vec![
                "--set train.iters=3".into(),
                "unknown key `train.iters`".into(),
            ],
        ),
        (
            "--set without a value",
            d.join("ok.toml"),
            vec!["train.iterations"],
            vec![],
            vec!["KEY=VALUE".into()],
        ),
        (
            "--set of the wrong type",
            d.join("ok.toml"),
            vec!["train.batch_size=big"],
            vec![],
            vec![
                "--set train.batch_size=big: key `train.batch_size`".into(),
                "invalid type".into(),
            ],
        ),
        (
            "unknown environment key",
            d.join("ok.toml"),
            vec![],
            vec![("EBMLAB_TRAIN__ITERATONS", "3")],
            vec!["EBMLAB_TRAIN__ITERATONS".into(), "`train.iteratons`".into()],
        ),
        (
            "invalid value",
            write(d, "kind.toml", "name = \"x\"\n[policy]\nkind = \"gpt\"\n"),
            vec![],
            vec![],
            vec!["kind.toml".into(), "policy.kind".into(), "gpt".into()],
        ),
        (
            "zero iterations",
            d.join("ok.toml"),
            vec!["train.iterations=0"],
            vec![],
            vec!["train.iterations must be at least 1".into()],
        ),
        (
            "unknown sweep key",
            write(
                d,
                "sweep.toml",
                "name = \"x\"\n[sweep]\n\"train.sed\" = [0, 1]\n",
            ),
            vec![],
            vec![],
            vec!["sweep.toml".into(), "`train.sed`".into()],
        ),
    ];
    for (name, file, sets, env, expected) in cases {
        let err = error_of(&file, &sets, &env);
        for part in expected {
            assert!(err.contains(&part), "{name}: `{part}` not in: {err}");
        }
        // figment's profile is not a part of any key the user wrote.
        assert!(!err.contains("default."), "{name}: {err}");
    }
}

#[test]
fn the_task_kind_chooses_the_task_keys_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let toy = write(
        dir.path(),
        "toy.toml",
        "name = \"toy\"\n[task]\nkind = \"point_mass\"\nn_steps = 9\n",
    );
    let spec = load(&toy, &[], &[]).unwrap();
    assert_eq!(spec.task.kind(), "point_mass");
    let json = serde_json::to_value(&spec.task).unwrap();
    assert_eq!(
        (json["n_steps"].as_i64(), json["gain"].as_f64()),
        (Some(9), Some(0.6))
    );
    assert!(json.get("n_dim").is_none(), "no particle key: {json}");
    // A particle key is unknown to the toy, and the other way round.
    let err = error_of(&toy, &["task.n_dim=3"], &[]);
    assert!(err.contains("unknown key `task.n_dim`"), "{err}");
    let particle = write(dir.path(), "p.toml", "name = \"p\"\n[task]\ngain = 0.5\n");
    assert!(error_of(&particle, &[], &[]).contains("unknown key `task.gain`"));
    // --set may change the kind; an unknown kind names where it came from.
    let spec = load(&particle, &["task.kind=point_mass"], &[]).unwrap();
    assert_eq!(
        serde_json::to_value(&spec.task).unwrap()["gain"].as_f64(),
        Some(0.5)
    );
    let err = error_of(&toy, &["task.kind=pendulum"], &[]);
    assert!(
        err.contains("--set task.kind=pendulum") && err.contains("unknown task kind"),
        "{err}"
    );
}

#[test]
fn shipped_experiments_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    for name in [
        "base",
        "particle_ibc",
        "particle_mse",
        "quickstart",
        "sweep_small",
        "particle_nd",
        "particle_nd_cpu",
    ] {
        let spec = load(&root.join(format!("{name}.toml")), &[], &[])
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(!spec.name.is_empty());
    }
    let ibc = load(&root.join("particle_ibc.toml"), &[], &[]).unwrap();
    assert_eq!(
        (
            ibc.train.iterations,
            ibc.train.batch_size,
            ibc.train.negatives.count,
            ibc.train.negatives.langevin.steps,
            ibc.eval.samples
        ),
        (100_000, 512, 8, 100, 16_384)
    );
    // The N-D study: 5 dimensions x 4 methods x 3 seeds, its CPU version 4 x 4 x 1, every
    // trial a valid spec (an ar_ebm trial is IBC's variant).
    for (name, count) in [("particle_nd", 60), ("particle_nd_cpu", 12)] {
        let spec = load(&root.join(format!("{name}.toml")), &[], &[]).unwrap();
        let trials = ebmlab::spec::expand_trials(&spec).unwrap();
        assert_eq!(trials.len(), count, "{name}");
        let kinds: std::collections::BTreeSet<String> =
            trials.iter().map(|t| t.spec.policy.kind.clone()).collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["ar_ebm", "ebm", "mse"]
        );
    }
    assert_eq!(
        load(&root.join("particle_mse.toml"), &[], &[])
            .unwrap()
            .policy
            .kind,
        "mse"
    );
}

#[test]
fn trial_ids_follow_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "s.toml", "name = \"a\"\n");
    let a = load(&file, &[], &[]).unwrap();
    assert_eq!(a.trial_id(), load(&file, &[], &[]).unwrap().trial_id());
    assert_ne!(
        a.trial_id(),
        load(&file, &["train.seed=1"], &[]).unwrap().trial_id()
    );
    assert_eq!(
        a.trial_id(),
        load(&file, &["name=\"b\""], &[]).unwrap().trial_id(),
        "the name is not identity"
    );
    // The resolved TOML reads back to the same spec.
    let back: Spec = toml::from_str(&a.to_toml()).unwrap();
    assert_eq!(back, a);
}

#[test]
fn keys_left_out_at_their_defaults_can_still_be_set_and_change_the_trial() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let file = root.join("quickstart.toml");
    let base = load(&file, &[], &[]).unwrap();
    let set = [
        "train.negatives.kind=\"dfo\"",
        "train.negatives.refined_fraction=0.5",
        "train.negatives.dfo_iters=2",
        "train.negatives.dfo_noise_scale=0.1",
    ];
    let eager = load(&file, &["resources.cuda_graphs=false"], &[]).unwrap();
    assert!(!eager.resources.cuda_graphs && base.resources.cuda_graphs);
    assert!(eager.to_toml().contains("cuda_graphs = false"));
    assert!(!base.to_toml().contains("cuda_graphs"), "left out while on");
    let dfo = load(&file, &set, &[]).unwrap();
    let n = &dfo.train.negatives;
    assert_eq!(
        (n.refined_fraction, n.dfo_iters, n.dfo_noise_scale),
        (0.5, 2, 0.1)
    );
    assert_ne!(dfo.trial_id(), base.trial_id());
    // The resolved TOML keeps them, and reads back to the same spec.
    let back: Spec = toml::from_str(&dfo.to_toml()).unwrap();
    assert_eq!(back, dfo);
    let err = format!(
        "{:#}",
        load(&file, &["train.negatives.refined_fractoin=0.5"], &[]).unwrap_err()
    );
    assert!(
        err.contains("refined_fractoin") && err.contains("refined_fraction"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        load(&file, &["train.negatives.refined_fraction=1.5"], &[]).unwrap_err()
    );
    assert!(err.contains("train.negatives.refined_fraction"), "{err}");
}

/// Trial ids are what a user's runs are filed under: a spec that did not change keeps its
/// id across versions of ebmlab (new keys stay out of the hash while at their defaults).
#[test]
fn trial_ids_stay_as_they_were_made() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    // The quickstart as it was when this id was first made (uniform counter-examples,
    // IBC's decay): the keys that came later, back at their defaults, add nothing.
    let quickstart = load(
        &root.join("quickstart.toml"),
        &[
            "train.lr_decay_steps=100",
            "train.negatives.kind=\"uniform\"",
            "train.negatives.refined_fraction=1.0",
            "train.negatives.dfo_iters=3",
            "train.negatives.dfo_noise_scale=0.33",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(quickstart.trial_id(), "1e375c92ff39");
    let mut moved = quickstart.clone();
    moved.resources.pack = ebmlab::spec::PackSize::Count(16);
    moved.resources.device = "cuda:1".into();
    moved.resources.cuda_graphs = false;
    assert_eq!(
        moved.trial_id(),
        "1e375c92ff39",
        "where it runs is not identity"
    );
    let mut bf16 = quickstart;
    bf16.train.precision = ebmlab::policy::Precision::Bf16;
    assert_ne!(bf16.trial_id(), "1e375c92ff39", "its precision is");
}

#[test]
fn set_replaces_one_swept_list_and_keeps_the_others() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let nd = root.join("particle_nd.toml");
    let spec = load(&nd, &["sweep.task.n_dim=[2, 4]"], &[]).unwrap();
    assert_eq!(
        spec.sweep["task.n_dim"],
        [toml::Value::Integer(2), toml::Value::Integer(4)]
    );
    assert_eq!(
        spec.sweep["train.seed"].len(),
        3,
        "the other swept key stays"
    );
    // 2 dimensions x 4 methods x 3 seeds.
    assert_eq!(ebmlab::spec::expand_trials(&spec).unwrap().len(), 24);
    // A trial of the smaller study is the same trial as in the whole one.
    let whole = load(&nd, &[], &[]).unwrap();
    let ids = |spec: &Spec| -> std::collections::BTreeSet<String> {
        ebmlab::spec::expand_trials(spec)
            .unwrap()
            .iter()
            .map(|t| t.id())
            .collect()
    };
    assert!(ids(&spec).is_subset(&ids(&whole)));
    // A key that is not a spec key, and a value that is not a list, are refused by name.
    let e = error_of(&nd, &["sweep.task.n_dims=[2]"], &[]);
    assert!(
        e.contains("--set sweep.task.n_dims=[2]") && e.contains("unknown key `task.n_dims`"),
        "{e}"
    );
    let e = error_of(&nd, &["sweep.task.n_dim=2"], &[]);
    assert!(e.contains("a swept key takes a non-empty list"), "{e}");
}

#[test]
fn resources_mps_is_off_unless_asked_and_not_part_of_a_trial() {
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/quickstart.toml");
    let plain = load(&quickstart, &[], &[]).unwrap();
    assert_eq!(plain.resources.mps, ebmlab::spec::MpsMode::Off);
    let asked = load(&quickstart, &["resources.mps=auto"], &[]).unwrap();
    assert_eq!(asked.resources.mps, ebmlab::spec::MpsMode::Auto);
    assert_eq!(asked.trial_id(), plain.trial_id());
    let e = error_of(&quickstart, &["resources.mps=sometimes"], &[]);
    assert!(
        e.contains("resources.mps") && e.contains("sometimes"),
        "{e}"
    );
}
