//! The LLM judge of `triage collect`: the versioned single-answer rubric and its strict parser.

/// Identifies the prompt below in every judged outcome (`OUTCOMES.answers.jsonl`), so scores
/// from different rubrics are never mixed unknowingly. Change it whenever the text changes.
pub const JUDGE_VERSION: &str = "triage-judge/1";

/// The judge's system message.
pub const JUDGE_SYSTEM: &str = "You are a helpful assistant.";

/// MT-Bench's single-answer grading prompt (lm-sys/FastChat, `single-v1`, Apache-2.0), with
/// `{question}` and `{answer}` filled in.
pub const JUDGE_TEMPLATE: &str = "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]";

/// The judge's user message for one answer.
pub fn judge_prompt(question: &str, answer: &str) -> String {
    // Split once, not replaced in turn, so "{answer}" inside a question stays literal.
    let (head, rest) = JUDGE_TEMPLATE
        .split_once("{question}")
        .unwrap_or((JUDGE_TEMPLATE, ""));
    let (middle, tail) = rest.split_once("{answer}").unwrap_or((rest, ""));
    format!("{head}{question}{middle}{answer}{tail}")
}

/// The rating in a judge's reply, as a score in [0.1, 1] (rating / 10). Strict: the reply
/// must hold `[[N]]` with N an integer from 1 to 10, and every such mark must agree; anything
/// else is an error naming what was wrong, never a guessed score.
pub fn parse_rating(reply: &str) -> Result<f64, String> {
    let mut found: Option<u32> = None;
    let mut rest = reply;
    while let Some(i) = rest.find("[[") {
        let after = &rest[i + 2..];
        let Some(j) = after.find("]]") else { break };
        let inner = after[..j].trim();
        let n: u32 = inner
            .parse()
            .map_err(|_| format!("the judge's rating {inner:?} is not an integer"))?;
        if !(1..=10).contains(&n) {
            return Err(format!("the judge's rating {n} is outside 1-10"));
        }
        if found.is_some_and(|f| f != n) {
            return Err("the judge gave more than one rating".into());
        }
        found = Some(n);
        rest = &after[j + 2..];
    }
    found
        .map(|n| f64::from(n) / 10.0)
        .ok_or_else(|| "the judge's reply has no [[rating]]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_are_parsed_strictly() {
        assert_eq!(parse_rating("Good and concise. Rating: [[8]]"), Ok(0.8));
        assert_eq!(parse_rating("[[10]] ... Rating: [[10]]"), Ok(1.0));
        assert!(
            parse_rating("Rating: 8")
                .unwrap_err()
                .contains("no [[rating]]")
        );
        assert!(
            parse_rating("Rating: [[8.5]]")
                .unwrap_err()
                .contains("not an integer")
        );
        assert!(
            parse_rating("Rating: [[0]]")
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            parse_rating("[[3]] or [[7]]")
                .unwrap_err()
                .contains("more than one")
        );
    }

    #[test]
    fn the_prompt_holds_question_and_answer_once() {
        let p = judge_prompt("What is 2+2? {answer}", "It is {question} 4");
        assert!(p.contains("2+2? {answer}\n"));
        assert!(p.contains("[Question]\nWhat is 2+2?"));
        assert!(p.contains("It is {question} 4\n[The End"));
        assert_eq!(p.matches("What is 2+2?").count(), 1);
    }
}
