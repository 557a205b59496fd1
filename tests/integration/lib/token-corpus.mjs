// A deterministic mixed-text corpus for the tokenizer's differential test and benchmark: the same
// bytes for the same seed and size, generated on the fly (nothing is committed). Node built-ins
// only.
//
//   tokenCorpus({ seed, bytes, longRuns }) -> { buf: Buffer, parts: [{kind, start, end}] }
//
// Kinds, mixed in chunks of 40..2,000 bytes: English prose, C/JS/Python code (spaces, tabs,
// CRLF), CJK (Han, kana, Hangul, full-width punctuation, U+3000), emoji (ZWJ families, skin
// tones, flags, keycaps, VS16), Arabic and Hebrew with their marks and digits, combining marks
// (Latin, Devanagari, Thai, Zalgo stacks), whitespace runs of every White_Space character and
// near-misses (U+180E, U+200B, U+FEFF), digit runs of every kind of \p{N}, contractions in
// every case (and the long s, and typographic apostrophes), special-token strings, random code
// points from all planes (Unicode 15.1/16/17 additions included), invalid UTF-8 (overlongs,
// surrogates, > U+10FFFF, truncated sequences, stray continuation bytes, C0/C1/F5..FF), NUL
// and control bytes. `longRuns` single-character runs of 2..20 KB are spread through it
// (tiktoken's own merge is quadratic in a piece's length, so they stay short).

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
export function prng(seed) {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

const WORDS = ('the of and to in is was that for it with as his on be at by this had not are but from or ' +
    'have an they which one you were her all she there would their we him been has when who will more no if ' +
    'out so said what up its about into than them can only other new some could time these two may then do ' +
    'first any my now such like our over man me even most made after also did many before must through back ' +
    'years where much your way well down should because each just those people how too little state good very ' +
    'make world still own see men work long get here between both life being under never day same another know ' +
    'while last might us great old year off come since against go came right used take three tokenizer ' +
    'encoding billing upstream context window streaming synergy leverage bandwidth deliverable ' +
    'internationalization antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis ' +
    'naïve café résumé Zürich Ångström façade jalapeño coöperate São Paulo Kraków Øresund').split(' ');
const CODE_KW = ['int', 'return', 'if', 'else', 'for', 'while', 'struct', 'static', 'const', 'void', 'char',
    'size_t', 'uint32_t', 'function', 'let', 'const', 'await', 'async', 'def', 'self', 'import', 'from',
    'lambda', 'None', 'True', 'null', 'undefined', 'println!', 'fn', 'impl', 'pub', 'match'];
const CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];
const SPECIALS = ['<|endoftext|>', '<|fim_prefix|>', '<|fim_middle|>', '<|fim_suffix|>', '<|endofprompt|>',
    '<|im_start|>', '<|im_end|>', '<|im_sep|>', '<|start|>', '<|message|>', '<|end|>', '<|channel|>',
    '<|constrain|>', '<|return|>', '<|call|>', '<|endoftext', 'endoftext|>', '<||>'];
// every White_Space code point, and three that look like space but are not (U+180E, U+200B, U+FEFF)
const SPACES = ['\t', '\n', '\v', '\f', '\r', ' ', '\u0085', '\u00a0', '\u1680', '\u2000', '\u2001', '\u2002',
    '\u2003', '\u2004', '\u2005', '\u2006', '\u2007', '\u2008', '\u2009', '\u200a', '\u2028', '\u2029',
    '\u202f', '\u205f', '\u3000', '\u180e', '\u200b', '\ufeff', '\r\n'];
const DIGITS = ['0123456789', '٠١٢٣٤٥٦٧٨٩', '۰۱۲۳۴۵۶۷۸۹', '०१२३४५६७८९', '０１２３４５６７８９', '²³¹⁰⁴⁵',
    '½¼¾⅓⅔', 'ⅠⅡⅢⅣⅤⅫⅬⅭ', '①②③④⑤⑩⑳', '〇〡〢〣', '𝟎𝟏𝟐𝟑𝟗', '𐒠𐒡𐒢'];
const EMOJI = ['😀', '😂', '🥲', '🤖', '👍', '🎉', '🔥', '❤️', '✨', '🚀', '🧑‍💻', '👩‍👩‍👧‍👦', '👨‍❤️‍💋‍👨',
    '🏳️‍🌈', '🏴‍☠️', '🇯🇵', '🇺🇸', '🇫🇷', '🇺🇦', '1️⃣', '#️⃣', '©️', '™️', '🫠', '🫶🏾', '🧔🏻‍♀️', '🤷‍♂️'];
const TONES = ['\u{1F3FB}', '\u{1F3FC}', '\u{1F3FD}', '\u{1F3FE}', '\u{1F3FF}'];
// invalid UTF-8, as bytes
const BAD = [[0x80], [0xbf], [0xc0, 0xaf], [0xc1, 0xbf], [0xe0, 0x80, 0xaf], [0xed, 0xa0, 0x80],
    [0xed, 0xbf, 0xbf], [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80], [0xff], [0xfe, 0xff], [0xe2, 0x82],
    [0xf0, 0x9f, 0x98], [0xf0, 0x9f], [0xc2], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xef, 0xbf, 0xbd],
    [0xf0, 0x80, 0x80, 0x80], [0xe1, 0x80, 0x41], [0xc3, 0x28]];
const RUN_CHARS = ['a', ' ', '!', '7', '\n', '中', 'A', '-', '=', '.', '\t', 'é', 'ab', '😀', ' \n'];

function makeGen(rnd) {
    const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
    const pick = (arr) => arr[Math.floor(rnd() * arr.length)];
    const cp = (lo, hi) => String.fromCodePoint(int(lo, hi));
    const word = () => {
        let w = pick(WORDS);
        const r = rnd();
        if (r < 0.08) w = w[0].toUpperCase() + w.slice(1);
        else if (r < 0.1) w = w.toUpperCase();
        return w;
    };
    const gen = {
        prose(n) {
            let s = '';
            while (s.length < n) {
                let sent = word();
                sent = sent[0].toUpperCase() + sent.slice(1);
                for (let k = int(3, 18); k > 0; k--) {
                    sent += (rnd() < 0.08 ? pick([',', ';', ':', ' -', ' —', ' (', ')']) : '') + ' ' + word();
                    if (rnd() < 0.05) sent += pick(CONTRACTIONS);
                }
                s += sent + pick(['.', '.', '.', '?', '!', '...', '."', "'"]) + (rnd() < 0.15 ? '\n\n' : ' ');
            }
            return s;
        },
        code(n) {
            let s = '';
            const ind = rnd() < 0.5 ? '    ' : '\t';
            const nl = rnd() < 0.2 ? '\r\n' : '\n';
            while (s.length < n) {
                const id = `${pick(WORDS).replace(/[^a-z]/g, 'x')}_${int(0, 99)}`;
                const depth = int(0, 4);
                s += ind.repeat(depth) + pick([
                    `${pick(CODE_KW)} ${id} = ${int(0, 1e6)};`,
                    `if (${id} != NULL && ${id}->len > ${int(0, 4096)}) {`,
                    `for (size_t i = 0; i < ${id}; i++) { sum += a[i] * 0x${int(0, 65535).toString(16)}; }`,
                    `return ${id}(${pick(CODE_KW)}, "${pick(WORDS)}\\n", ${rnd().toFixed(4)});`,
                    `// ${pick(WORDS)} ${pick(WORDS)} ${pick(WORDS)}: TODO(${pick(WORDS)})`,
                    `def ${id}(self, *args, **kwargs) -> Dict[str, int]:`,
                    `const ${id} = await fetch(\`/api/\${${id}}?q=\${encodeURIComponent(x)}\`);`,
                    `}`, `#include <${pick(WORDS)}.h>`, `    /* ${pick(WORDS)} */   `, '',
                    `x = [${int(0, 9)}, ${int(10, 999)}, ${int(1000, 99999)}]; y = {'a': 1, "b": None}`,
                    `SELECT ${id}, COUNT(*) FROM t WHERE v >= ${int(0, 100)} GROUP BY 1;`,
                ]) + (rnd() < 0.05 ? ' '.repeat(int(1, 6)) : '') + nl;
            }
            return s;
        },
        cjk(n) {
            let s = '';
            while (s.length < n) {
                const r = rnd();
                if (r < 0.45) s += cp(0x4e00, 0x9fff);
                else if (r < 0.6) s += cp(0x3041, 0x3096);
                else if (r < 0.7) s += cp(0x30a1, 0x30fa);
                else if (r < 0.85) s += cp(0xac00, 0xd7a3);
                else if (r < 0.93) s += pick(['、', '。', '「', '」', '！', '？', '（', '）', '・', 'ー', '〜']);
                else if (r < 0.96) s += pick(['\u3000', ' ', '\n']);
                else s += pick(['ChatGPT', 'API', '2025年', '100%', 'OK']);
            }
            return s;
        },
        emoji(n) {
            let s = '';
            while (s.length < n) {
                let e = pick(EMOJI);
                if (rnd() < 0.25) e = pick(['👍', '👋', '🙏', '🤝', '🧑', '👶', '💪']) + pick(TONES);
                s += e + (rnd() < 0.3 ? ' ' : '') + (rnd() < 0.1 ? word() + ' ' : '');
            }
            return s;
        },
        rtl(n) {
            let s = '';
            while (s.length < n) {
                const ar = rnd() < 0.6;
                let w = '';
                for (let k = int(2, 9); k > 0; k--) {
                    w += ar ? cp(0x0621, 0x064a) : cp(0x05d0, 0x05ea);
                    if (rnd() < 0.25) w += ar ? cp(0x064b, 0x0652) : cp(0x05b0, 0x05bc);
                }
                s += w + pick([' ', ' ', ' ', '، ', '. ', '؟ ', ': ', ' ١٢٣ ', ' 42 ', '\u200f', '\u200e', '\n']);
            }
            return s;
        },
        combining(n) {
            let s = '';
            while (s.length < n) {
                const r = rnd();
                if (r < 0.4) {
                    s += pick(['a', 'e', 'o', 'Z', 'n', 'i', 'A']);
                    for (let k = int(1, 6); k > 0; k--) s += cp(0x0300, 0x036f);
                } else if (r < 0.6) {
                    s += cp(0x0915, 0x0939) + cp(0x093e, 0x094d) + (rnd() < 0.3 ? '्' + cp(0x0915, 0x0939) : '');
                } else if (r < 0.75) {
                    s += cp(0x0e01, 0x0e2e) + (rnd() < 0.5 ? cp(0x0e31, 0x0e3a) : '') + (rnd() < 0.3 ? cp(0x0e48, 0x0e4b) : '');
                } else if (r < 0.85) {
                    s += cp(0x1100, 0x1112) + cp(0x1161, 0x1175); // conjoining jamo
                } else {
                    s += pick([' ', ' ', '\n', '. ', cp(0x20d0, 0x20f0), cp(0xfe20, 0xfe2f)]);
                }
            }
            return s;
        },
        whitespace(n) {
            let s = '';
            while (s.length < n) {
                const r = rnd();
                if (r < 0.5) {
                    for (let k = int(1, 40); k > 0; k--) s += rnd() < 0.5 ? pick(SPACES) : ' ';
                } else if (r < 0.7) {
                    s += pick(SPACES).repeat(int(1, 200));
                } else {
                    s += word();
                }
                if (rnd() < 0.3) s += pick(['x', '!', '1', '中', "'s", '\u0301']);
            }
            return s;
        },
        digits(n) {
            let s = '';
            while (s.length < n) {
                const set = [...pick(DIGITS)];
                let d = '';
                for (let k = int(1, 25); k > 0; k--) d += pick(set);
                s += d + pick([' ', '', '.', ',', '-', 'x', 'e', '%', ' $', '/', ':', '\n', 'th ', 'px;']);
            }
            return s;
        },
        contractions(n) {
            let s = '';
            while (s.length < n) {
                let c = pick(CONTRACTIONS);
                c = [...c].map((ch) => (rnd() < 0.5 ? ch.toUpperCase() : ch)).join('');
                if (rnd() < 0.1) c = c.replace(/s/i, '\u017f'); // long s folds to s
                if (rnd() < 0.05) c = c.replace("'", '\u2019');
                s += pick(['', ' ', word(), word(), '1', '中', '!', '\n', "'"]) + c + pick(['', ' ', 'x', '\n', "'s", '.', c]);
            }
            return s;
        },
        specials(n) {
            let s = '';
            while (s.length < n) s += pick(SPECIALS) + pick(['', ' ', '\n', word(), ' hi ', pick(SPECIALS)]);
            return s;
        },
        random(n) {
            let s = '';
            while (s.length < n) {
                const r = rnd();
                let c;
                if (r < 0.3) c = int(0x80, 0x2fff);
                else if (r < 0.5) c = int(0x3000, 0xffff);
                else if (r < 0.8) c = int(0x10000, 0x3ffff); // SMP, SIP, TIP (Unicode 15-17 additions)
                else if (r < 0.85) c = int(0xe0000, 0x10ffff); // tags, private use
                else c = pick([0x1c89, 0x1c8a, 0xa7cb, 0xa7dc, 0x105c0, 0x10d4a, 0x10d40, 0x11380, 0x16d40,
                    0x1e5d0, 0x2ebf0, 0x31350, 0x323b0, 0x10940, 0x11db0, 0x16ea0, 0x1e6c0, 0x0870, 0x1e4d0,
                    0x11f04, 0x1e030, 0x1cc00, 0x1ccf0, 0x10ec2]);
                if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
                s += String.fromCodePoint(c);
                if (rnd() < 0.15) s += pick([' ', "'s", 'a', '1', '\n', 'A']);
            }
            return s;
        },
    };
    return { gen, int, pick };
}

const WEIGHTS = [['prose', 26], ['code', 18], ['cjk', 9], ['emoji', 5], ['rtl', 7], ['combining', 5],
    ['whitespace', 6], ['digits', 4], ['contractions', 4], ['specials', 2], ['random', 6], ['invalid', 3],
    ['controls', 1]];

/** The corpus: at least `bytes` bytes (default 5.25 MB) for `seed`, with `longRuns` long runs. */
export function tokenCorpus({ seed = 7, bytes = 5_250_000, longRuns = 12 } = {}) {
    const rnd = prng(seed);
    const { gen, int, pick } = makeGen(rnd);
    const total = WEIGHTS.reduce((n, [, w]) => n + w, 0);
    const chunks = [];
    const parts = [];
    let size = 0;
    const push = (kind, b) => {
        parts.push({ kind, start: size, end: size + b.length });
        chunks.push(b);
        size += b.length;
    };
    const runAt = new Set();
    for (let k = 0; k < longRuns; k++) runAt.add(Math.floor(((k + 0.5) / longRuns) * bytes));
    let nextRun = [...runAt].sort((a, b) => a - b);
    while (size < bytes) {
        if (nextRun.length && size >= nextRun[0]) {
            nextRun.shift();
            const unit = pick(RUN_CHARS);
            const len = int(2000, 20000);
            push('run', Buffer.from(unit.repeat(Math.ceil(len / Buffer.byteLength(unit))), 'utf8'));
            continue;
        }
        let r = rnd() * total;
        let kind = WEIGHTS[0][0];
        for (const [k, w] of WEIGHTS) {
            if ((r -= w) < 0) {
                kind = k;
                break;
            }
        }
        const n = int(40, 2000);
        if (kind === 'invalid') {
            const out = [];
            while (out.length < n / 4) {
                out.push(...pick(BAD));
                if (rnd() < 0.5) out.push(...Buffer.from(pick([' ', 'a', "'s", '中', '😀', 'é', '\n', '']), 'utf8'));
            }
            push(kind, Buffer.from(out));
        } else if (kind === 'controls') {
            const out = [];
            for (let k = int(5, 60); k > 0; k--) out.push(rnd() < 0.5 ? 0 : int(1, 31), ...(rnd() < 0.3 ? [0x61] : []));
            out.push(0x7f);
            push(kind, Buffer.from(out));
        } else {
            push(kind, Buffer.from(gen[kind](n), 'utf8'));
        }
    }
    return { buf: Buffer.concat(chunks), parts };
}
