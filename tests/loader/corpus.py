"""Tokenizer test strings, shared by the GGUF and HF-directory tokenizer tests."""

# Strings chosen to hit the byte-level BPE's edge cases: the split regex (contractions, digit
# runs, punctuation, whitespace runs before words and at the end), multi-byte UTF-8 (2, 3 and
# 4 bytes, combining marks, ZWJ sequences, flags, variation selectors), and special tokens
# written in plain text.
TRICKY = [
    "",
    " ",
    "   ",
    "Hello, world!",
    " Hello",
    "  leading spaces",
    "trailing spaces   ",
    "\tTabs\tand\t\ttabs",
    "line one\nline two\n\n\nfour newlines\n",
    "windows\r\nline\r\nendings\r\n",
    " \n \t \r\n mixed \u00a0 whitespace \u2003 ",
    "I'm sure they'll say it's what we'd've done. DON'T SHOUT",
    "3.14159265358979323846264338327950288419716939937510",
    "1234567890 12345 007 1,000,000 -42 +3e-10 0x1F 1_000",
    "def f(x):\n    return {'a': [x ** 2, x // 3]}  # comment\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }\n\t\treturn sum;",
    "https://example.com/path?q=1&r=two#frag <a href=\"x\">link</a>",
    "naïve café résumé Ångström façade Zürich",
    "e\u0301 a\u0300\u0301\u0302 Z\u0351\u0352\u0353\u0354 (combining marks)",
    "Ελληνικά Русский текст עברית العربية हिन्दी ไทย",
    "日本語のテキストと漢字、中文文本，한국어 텍스트。",
    "Emoji: 😀 🎉🎉 👍🏽 ❤️ ✨",
    "ZWJ: 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍🚀 and flags 🇫🇷🇯🇵",
    "math ∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ ≈ π, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝒮𝒸𝓇𝒾𝓅𝓉",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|endoftext|>end",
    "not special: <|im_start |> <im_start> <|unknown|>",
    "!!!???...,,,;;;:::---___===+++***",
    "a" * 300,
    "🙂" * 40,
    "\x00\x01\x1f control chars \x7f",
    "mixed日本語andEnglish混合text123数字",
]
