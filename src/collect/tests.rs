use super::*;

fn write(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompts.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    (dir, path)
}

#[test]
fn prompts_are_read_with_their_scoring() {
    let (_d, p) = write(&[
        r#"{"id": "a", "prompt": "What is 6*7?", "reference": 42}"#,
        r#"{"id": "b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}], "reference": "Paris", "match": "exact"}"#,
        "",
        r#"{"id": "c", "prompt": "Write a haiku.", "category": "creative"}"#,
    ]);
    let ps = read_prompts(&p, true).unwrap();
    assert_eq!(ps.len(), 3);
    assert_eq!(
        ps[0].scoring,
        Scoring::Reference(Match::Number, "42".into())
    );
    assert_eq!(
        ps[1].scoring,
        Scoring::Reference(Match::Exact, "Paris".into())
    );
    assert_eq!(ps[1].routed, "Capital of France?");
    assert_eq!(ps[1].messages.len(), 2);
    assert_eq!(ps[2].scoring, Scoring::Judge);
    assert_eq!(ps[2].category.as_deref(), Some("creative"));
}

#[test]
fn unusable_lines_are_refused_naming_the_line_before_any_call() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"id": "", "prompt": "x", "reference": "y"}"#,
            "id: must not be empty",
        ),
        (
            r#"{"id": "a", "reference": "y"}"#,
            "exactly one of prompt and messages",
        ),
        (
            r#"{"id": "a", "prompt": "x", "messages": [], "reference": "y"}"#,
            "exactly one",
        ),
        (
            r#"{"id": "a", "prompt": "x", "reference": "(", "match": "regex"}"#,
            "regex",
        ),
        (
            r#"{"id": "a", "prompt": "x", "match": "exact"}"#,
            "match: needs a reference",
        ),
        (r#"{"id": "a", "prompt": "x"}"#, "no --judge"),
        (
            r#"{"id": "a", "prompt": "\u200b", "reference": "y"}"#,
            "visible text",
        ),
        (
            r#"{"id": "a", "messages": [{"role": "tool", "content": "x"}], "reference": "y"}"#,
            "messages[0].role",
        ),
        (
            r#"{"id": "a", "prompt": "x", "reference": "y", "answer": 1}"#,
            "unknown field",
        ),
    ];
    for (line, want) in cases {
        let (_d, p) = write(&[r#"{"id": "ok", "prompt": "fine", "reference": "A"}"#, line]);
        let e = read_prompts(&p, false).unwrap_err().to_string();
        assert!(e.contains(":2: ") && e.contains(want), "{line}: {e}");
    }
    let (_d, p) = write(&[
        r#"{"id": "a", "prompt": "x", "reference": "y"}"#,
        r#"{"id": "a", "prompt": "z", "reference": "y"}"#,
    ]);
    assert!(
        read_prompts(&p, false)
            .unwrap_err()
            .to_string()
            .contains("appears twice")
    );
}

#[test]
fn a_fifo_or_a_directory_is_refused_as_the_prompts_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(read_prompts(dir.path(), false).is_err());
    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_prompts(&fifo, false).is_err());
    }
}

#[test]
fn resume_knows_finished_rows_and_drops_a_cut_off_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.jsonl");
    assert!(resume(&out).unwrap().is_empty());
    std::fs::write(&out, "{\"id\":\"a\",\"outcomes\":{}}\n{\"id\":\"b\",\"outc").unwrap();
    let done = resume(&out).unwrap();
    assert_eq!(done, HashSet::from(["a".to_string()]));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "{\"id\":\"a\",\"outcomes\":{}}\n"
    );
    assert_eq!(
        side_file(&out, "answers"),
        dir.path().join("o.answers.jsonl")
    );
}
