"""
The embedded corpus: a seeded generator of short stories whose sentences carry facts, and a
checker that scores a continuation against the facts of its prompt.

The stories are the CPU-scale stand-in for OpenWebText2: 25-125 GPT-2 tokens each (67 on
average), about 210 distinct tokens in all, ~2.5M tokens a second from the generator. They are
small enough to learn in minutes, yet a model cannot score well by memorising: who has how many
of what, where everyone is and which pronoun fits are facts set earlier in the story that later
sentences must respect.

    Once upon a time, there was a kind girl named Mia who had 3 apples. One day, she went to
    the park. At the park, Mia met a boy named Tom who had 2 apples. Mia gave Tom 1 apple.
    Then Tom ate 2 of his apples. In the end, Mia had 2 apples and Tom had 1 apple.

The grammar (every sentence ends with '.', sentences are separated by whitespace):
    intro   Once upon a time, there was a [ADJ] girl|boy named NAME[ who had COUNT].
            NAME was a [ADJ] girl|boy[ who had COUNT].
    meet    [PREFIX|At the PLACE, ]SUBJ met a girl|boy named NAME[ who had COUNT].
    event   [PREFIX]SUBJ went to the PLACE.
            [PREFIX]SUBJ found N [more ]OBJ[ at the PLACE].
            [PREFIX]SUBJ bought N [more ]OBJ at the market.
            [PREFIX]SUBJ went to the market and bought N [more ]OBJ.
            [PREFIX]SUBJ lost|ate N of his|her OBJ.          (only food is eaten)
            [PREFIX]SUBJ gave N OBJ to NAME.   [PREFIX]SUBJ gave NAME N OBJ.
            [PREFIX]NAME and NAME went to the PLACE.
            [PREFIX]SUBJ had COUNT left.   Now SUBJ had COUNT.   [PREFIX]SUBJ was happy|sad.
    closing In the end, NAME had COUNT[ and NAME had COUNT].
SUBJ is a name or he/she (capitalised only at the start of a sentence); COUNT is 'no OBJS', '1 OBJ'
or 'N OBJS'; N is a positive integer written in digits; the noun agrees with the number.

The facts (what check() verifies beyond the grammar):
    - a name is introduced once (intro or meet) with the gender of that name, and only
      introduced names act or receive;
    - he/she refers to the subject of the previous sentence and agrees with its gender;
      his/her agrees with the subject of its own sentence;
    - counts start at the introduction's COUNT (0 if none) and change only through found,
      bought (+N), lost, ate (-N) and gave (-N for the giver, +N for the receiver); nobody loses,
      eats or gives more than they have; 'more' needs a count above 0; every 'had' states the
      current count;
    - a character's place is unknown until a sentence puts them somewhere; 'at the PLACE' must
      be where they are; nobody goes where they already are; giving needs both in one place;
    - happy (sad) means more (fewer) things in total than at the introduction.
"""
import random
import re

VERSION = 1  # bump when the stories change, so meta.json tells old data from new

GIRLS = ('Mia', 'Lily', 'Emma', 'Anna', 'Sara', 'Lucy', 'Zoe', 'Eva', 'Amy', 'Kate', 'Nora',
         'Ruby', 'Maya', 'Lena', 'Jane', 'Grace')
BOYS = ('Tom', 'Ben', 'Sam', 'Max', 'Leo', 'Jack', 'Noah', 'Finn', 'Luke', 'Omar', 'Paul', 'Tim',
        'Dan', 'Joe', 'Adam', 'Hugo')
GENDER = {**{name: 'girl' for name in GIRLS}, **{name: 'boy' for name in BOYS}}
FOODS = ('apple', 'pear', 'plum', 'cookie', 'cake', 'carrot', 'egg', 'orange', 'banana', 'muffin')
THINGS = ('shell', 'stone', 'coin', 'marble', 'balloon', 'flower', 'book', 'toy', 'sticker',
          'feather', 'ball', 'pencil')
PLURAL = {word: word + 's' for word in FOODS + THINGS}
SINGULAR = {plural: word for word, plural in PLURAL.items()}
PLACES = ('park', 'market', 'beach', 'forest', 'garden', 'farm', 'lake', 'school', 'river', 'zoo')
ADJECTIVES = ('little', 'kind', 'brave', 'happy', 'shy', 'clever', 'small', 'funny', 'quiet', 'young')
PREFIXES = ('Then ', 'Later, ', 'After that, ', 'The next day, ', 'One day, ', 'Soon ')
PRONOUN = {'girl': 'she', 'boy': 'he'}
POSSESSIVE = {'girl': 'her', 'boy': 'his'}


def count_phrase(n, obj):
    """'no apples', '1 apple', '3 apples'."""
    return f"no {PLURAL[obj]}" if n == 0 else f"1 {obj}" if n == 1 else f"{n} {PLURAL[obj]}"

# -----------------------------------------------------------------------------
# Generator


class _Teller:
    """Tells one story, keeping the facts (counts, places) it has stated so far."""

    def __init__(self, rng):
        self.rng = rng
        self.obj = rng.choice(FOODS + THINGS)
        self.count, self.place, self.start = {}, {}, {}
        self.names = []       # characters in order of introduction
        self.focus = None     # subject of the previous sentence: what he/she refers to
        self.sentences = []

    def say(self, text, focus):
        self.sentences.append(text)
        self.focus = focus

    def subject(self, name, prefix=''):
        """`prefix` + name, or + the pronoun when `name` was the previous sentence's subject."""
        if name != self.focus or self.rng.random() < 0.4:
            return prefix + name
        pronoun = PRONOUN[GENDER[name]]
        return prefix + pronoun if prefix else pronoun.capitalize()

    def prefix(self):
        return self.rng.choice(PREFIXES) if self.rng.random() < 0.4 else ''

    def introduce(self, name, count):
        """Add a character; return the ' who had COUNT' that states its count (or '')."""
        self.names.append(name)
        self.count[name] = self.start[name] = count
        self.place[name] = None
        return f" who had {count_phrase(count, self.obj)}" if count or self.rng.random() < 0.1 else ''

    def begin(self, name):
        rng = self.rng
        adjective = rng.choice(ADJECTIVES) + ' ' if rng.random() < 0.7 else ''
        has = self.introduce(name, rng.choice((0, 0, 1, 2, 3, 4, 5, 6)))
        if rng.random() < 0.6:
            self.say(f"Once upon a time, there was a {adjective}{GENDER[name]} named {name}{has}.", name)
        else:
            self.say(f"{name} was a {adjective}{GENDER[name]}{has}.", name)

    def meet(self, name, other):
        if self.place[name] is None or self.rng.random() < 0.5:
            self.place[name] = self.place[name] or self.rng.choice(PLACES)
            opening = self.subject(name, f"At the {self.place[name]}, ")
        else:
            opening = self.subject(name, self.prefix())
        has = self.introduce(other, self.rng.choice((0, 1, 2, 3, 4, 5)))
        self.place[other] = self.place[name]
        self.say(f"{opening} met a {GENDER[other]} named {other}{has}.", name)

    def event(self, name):
        """One event for `name`, drawn among those the facts so far allow."""
        rng, obj, have = self.rng, self.obj, self.count[name]
        others = [o for o in self.names if o != name and self.place[o] == self.place[name]]
        options = ['find'] * 3 + ['move'] * 2 + ['buy']
        if have:
            options += ['lose'] * 2 + ['eat'] * 2 * (obj in FOODS) + ['give'] * 3 * bool(others)
        if others and self.place[name] is not None:
            options.append('together')
        kind = rng.choice(options)
        s, poss = self.subject(name, self.prefix()), POSSESSIVE[GENDER[name]]
        k = rng.randint(1, min(have, 3)) if kind in ('lose', 'eat', 'give') else rng.randint(1, 3)
        more = 'more ' if have and rng.random() < 0.3 else ''
        some = count_phrase(k, obj).replace(' ', ' ' + more, 1)  # '2 apples', '1 more apple'
        if kind == 'find':
            here = ''
            if rng.random() < 0.5:
                self.place[name] = self.place[name] or rng.choice(PLACES)
                here = f" at the {self.place[name]}"
            self.say(f"{s} found {some}{here}.", name)
        elif kind == 'buy':
            at_market = self.place[name] == 'market'
            self.say(f"{s} bought {some} at the market." if at_market else
                     f"{s} went to the market and bought {some}.", name)
            self.place[name] = 'market'
        elif kind == 'move':
            self.place[name] = rng.choice([p for p in PLACES if p != self.place[name]])
            self.say(f"{s} went to the {self.place[name]}.", name)
            return
        elif kind in ('lose', 'eat'):
            self.say(f"{s} {'lost' if kind == 'lose' else 'ate'} {k} of {poss} {PLURAL[obj]}.", name)
        elif kind == 'give':
            other = rng.choice(others)
            self.say(f"{s} gave {count_phrase(k, obj)} to {other}." if rng.random() < 0.5 else
                     f"{s} gave {other} {count_phrase(k, obj)}.", name)
            self.count[other] += k
        else:  # together: both move, and 'he'/'she' has no single antecedent afterwards
            other = rng.choice(others)
            place = rng.choice([p for p in PLACES if p != self.place[name]])
            self.place[name] = self.place[other] = place
            self.say(f"{self.prefix()}{name} and {other} went to the {place}.", None)
            return
        self.count[name] += k if kind in ('find', 'buy') else -k
        if rng.random() < 0.2 and len(self.sentences) < 7:  # now and then (if short), restate the count
            now = count_phrase(self.count[name], obj)
            left = kind in ('lose', 'eat', 'give') and rng.random() < 0.5
            self.say(f"{self.subject(name)} had {now} left." if left else
                     f"{self.subject(name, 'Now ')} had {now}.", name)

    def end(self):
        names = self.names[:]
        self.rng.shuffle(names)
        closing = ' and '.join(f"{name} had {count_phrase(self.count[name], self.obj)}" for name in names)
        self.say(f"In the end, {closing}.", names[0] if len(names) == 1 else None)
        changed = [name for name in names if self.count[name] != self.start[name]]
        if changed and self.rng.random() < 0.6:
            name = self.rng.choice(changed)
            feeling = 'happy' if self.count[name] > self.start[name] else 'sad'
            self.say(f"{self.subject(name)} was {feeling}.", name)


def story(rng):
    """One story (a string of a few sentences) drawn with `rng` (a random.Random)."""
    teller = _Teller(rng)
    hero = rng.choice(GIRLS + BOYS)
    teller.begin(hero)
    n_events = rng.randint(2, 5)
    meet_at = rng.randrange(n_events + 1) if rng.random() < 0.6 else -1
    for i in range(n_events + 1):
        if i == meet_at:
            other = rng.choice([name for name in GIRLS + BOYS if name != hero])
            teller.meet(hero, other)
        if i < n_events:
            actor = hero if len(teller.names) == 1 or rng.random() < 0.65 else teller.names[1]
            teller.event(actor)
    teller.end()
    return ' '.join(teller.sentences)


def generate_stories(n, seed=0):
    """Yield `n` stories, the same ones for the same seed (each story is one document)."""
    rng = random.Random(seed)
    for _ in range(n):
        yield story(rng)

# -----------------------------------------------------------------------------
# Grammar: a sentence -> (kind, fields), or a reason why it is not well formed


_NAME, _WORD, _POS = r'[A-Z][a-z]+', r'[a-z]+', r'[1-9][0-9]*'  # _POS: a positive number
_PREFIX = '(?P<prefix>' + '|'.join(re.escape(p) for p in PREFIXES) + ')?'
_SUBJ = rf'(?P<subj>{_NAME}|[Hh]e|[Ss]he)'
_COUNT = rf'(?P<n{{i}}>no|{_POS}) (?P<obj{{i}}>{_WORD})'
_CNT0, _CNT1 = _COUNT.format(i=0), _COUNT.format(i=1)
_HAS = rf'(?: who had {_CNT0})?'
_ADJ = rf'(?:(?P<adj>{_WORD}) )?'
_GROWS = rf'(?P<n0>{_POS}) (?P<more>more )?(?P<obj0>{_WORD})'
_RULES = [  # (kind, pattern); a sentence must match one pattern exactly
    ('intro', rf'Once upon a time, there was a {_ADJ}(?P<g>girl|boy) named (?P<new>{_NAME}){_HAS}\.'),
    ('intro', rf'(?P<new>{_NAME}) was a {_ADJ}(?P<g>girl|boy){_HAS}\.'),
    ('meet', rf'(?:{_PREFIX}|At the (?P<place>{_WORD}), ){_SUBJ} met a (?P<g>girl|boy) '
             rf'named (?P<new>{_NAME}){_HAS}\.'),
    ('move', rf'{_PREFIX}{_SUBJ} went to the (?P<dest>{_WORD})\.'),
    ('find', rf'{_PREFIX}{_SUBJ} found {_GROWS}(?: at the (?P<place>{_WORD}))?\.'),
    ('buy', rf'{_PREFIX}{_SUBJ} bought {_GROWS} at the (?P<place>market)\.'),
    ('buy', rf'{_PREFIX}{_SUBJ} went to the (?P<dest>market) and bought {_GROWS}\.'),
    ('lose', rf'{_PREFIX}{_SUBJ} (?P<verb>lost|ate) (?P<n0>{_POS}) of (?P<poss>his|her) (?P<objs>{_WORD})\.'),
    ('give', rf'{_PREFIX}{_SUBJ} gave (?P<n0>{_POS}) (?P<obj0>{_WORD}) to (?P<to>{_NAME})\.'),
    ('give', rf'{_PREFIX}{_SUBJ} gave (?P<to>{_NAME}) (?P<n0>{_POS}) (?P<obj0>{_WORD})\.'),
    ('together', rf'{_PREFIX}(?P<subj>{_NAME}) and (?P<with>{_NAME}) went to the (?P<place>{_WORD})\.'),
    ('had', rf'{_PREFIX}{_SUBJ} had {_CNT0} left\.'),
    ('had', rf'Now (?P<now>{_NAME}|he|she) had {_CNT0}\.'),
    ('feel', rf'{_PREFIX}{_SUBJ} was (?P<feel>happy|sad)\.'),
    ('end', rf'In the end, (?P<end0>{_NAME}) had {_CNT0}(?: and (?P<end1>{_NAME}) had {_CNT1})?\.'),
]
_RULES = [(kind, re.compile(pattern)) for kind, pattern in _RULES]


def _noun(fields, i):
    """Check number agreement of count i; return (n, singular noun) or raise ValueError."""
    n, word = fields[f'n{i}'], fields[f'obj{i}']
    n = 0 if n == 'no' else int(n)
    if n == 1 and word in PLURAL or n != 1 and word in SINGULAR:
        return n, SINGULAR.get(word, word)
    raise ValueError(f"'{fields[f'n{i}']} {word}': unknown object or wrong number")


def parse(sentence):
    """A sentence -> dict of its fields with 'kind'; raises ValueError if not well formed."""
    for kind, pattern in _RULES:
        match = pattern.fullmatch(sentence)
        if match:
            break
    else:
        raise ValueError('matches no sentence form')
    f = {k: v for k, v in match.groupdict().items() if v is not None}
    f['kind'] = kind
    if 'now' in f:
        f['subj'], f['prefix'] = f.pop('now'), 'Now '
    if kind == 'meet' and 'place' in f:
        f['prefix'] = 'At the ...'
    subj = f.get('subj', '')
    pronoun = subj.lower() in ('he', 'she')
    if pronoun and subj[0].isupper() == ('prefix' in f):
        raise ValueError(f"'{subj}' is wrongly capitalised")
    if pronoun and kind == 'together':
        raise ValueError("'X and Y' takes names, not pronouns")
    for key in ('subj', 'new', 'to', 'with', 'end0', 'end1'):
        if key in f and f[key] not in GENDER and not (key == 'subj' and pronoun):
            raise ValueError(f"unknown name '{f[key]}'")
    if f.get('place', 'park') not in PLACES or f.get('dest', 'park') not in PLACES:
        raise ValueError('unknown place')
    if f.get('adj', 'kind') not in ADJECTIVES:
        raise ValueError('unknown adjective')
    if 'n0' in f and 'objs' not in f:
        f['n0'], f['obj0'] = _noun(f, 0)
    if 'n1' in f:
        f['n1'], f['obj1'] = _noun(f, 1)
    if 'objs' in f:  # lost/ate N of his/her OBJS
        if f['objs'] not in SINGULAR:
            raise ValueError(f"'{f['objs']}' is not a known plural object")
        f['n0'], f['obj0'] = int(f['n0']), SINGULAR[f['objs']]
        if f['verb'] == 'ate' and f['obj0'] not in FOODS:
            raise ValueError(f"'{f['objs']}' cannot be eaten")
    return f

# -----------------------------------------------------------------------------
# Facts: the state of the story world, and what a sentence contradicts in it


class _World:
    def __init__(self):
        self.gender, self.count, self.place, self.start = {}, {}, {}, {}
        self.focus = None

    def add(self, name, gender, count):
        self.gender[name], self.place[name] = gender, None
        self.count[name] = count
        self.start[name] = sum(count.values())

    def who(self, name, problems):
        """The character a name or pronoun refers to (introducing unknown names, flagged)."""
        if name.lower() in ('he', 'she'):
            if self.focus is None:
                problems.append(f"'{name}' has no antecedent")
                return None
            if PRONOUN[self.gender[self.focus]] != name.lower():
                problems.append(f"'{name}' refers to {self.focus}, a {self.gender[self.focus]}")
            return self.focus
        if name not in self.gender:
            problems.append(f"{name} was never introduced")
            self.add(name, GENDER[name], {})
        return name

    def at(self, name, place, problems):
        if name is not None and self.place[name] not in (None, place):
            problems.append(f"{name} is at the {self.place[name]}, not the {place}")
        if name is not None:
            self.place[name] = place

    def change(self, name, obj, delta, problems):
        have = self.count[name].get(obj, 0)
        if have + delta < 0:
            problems.append(f"{name} has {have} {obj}(s), not {-delta}")
        self.count[name][obj] = max(0, have + delta)

    def state(self, name, n, obj, problems):
        """A 'had' statement: must equal the count; afterwards the count is what it says."""
        if name is not None and self.count[name].get(obj, 0) != n:
            problems.append(f"{name} has {self.count[name].get(obj, 0)} {obj}(s), not {n}")
        if name is not None:
            self.count[name][obj] = n

    def introduce(self, f, actor, problems):
        """intro or meet: a new character, with the count stated (or none)."""
        new = f['new']
        if new in self.gender:
            problems.append(f"{new} was already introduced")
        if f['g'] != GENDER[new]:
            problems.append(f"{new} is a {GENDER[new]}, not a {f['g']}")
        self.add(new, f['g'], {f['obj0']: f['n0']} if 'n0' in f else {})
        if f['kind'] == 'meet' and actor is not None:
            if 'place' in f:
                self.at(actor, f['place'], problems)
            self.place[new] = self.place[actor]
        return actor if f['kind'] == 'meet' else new

    def give(self, f, actor, problems):
        receiver = self.who(f['to'], problems)
        if receiver == actor:
            problems.append(f"{actor} gives to {actor}")
        elif actor is not None:
            here, there = self.place[actor], self.place[receiver]
            if None not in (here, there) and here != there:
                problems.append(f"{actor} and {receiver} are not in the same place")
            self.place[actor] = self.place[receiver] = self.place[actor] or self.place[receiver]
            self.change(actor, f['obj0'], -f['n0'], problems)
            self.change(receiver, f['obj0'], f['n0'], [])

    def apply(self, f):
        """Update the world with parsed sentence `f`; return the facts it contradicts."""
        problems, kind = [], f['kind']
        actor = self.who(f['subj'], problems) if 'subj' in f else None
        if 'poss' in f and actor is not None and f['poss'] != POSSESSIVE[self.gender[actor]]:
            problems.append(f"'{f['poss']}' does not fit {actor}")
        if 'dest' in f and actor is not None:  # went to the PLACE [and bought ...]
            if self.place[actor] == f['dest']:
                problems.append(f"{actor} is already at the {f['dest']}")
            self.place[actor] = f['dest']
        if kind in ('intro', 'meet'):
            actor = self.introduce(f, actor, problems)
        elif kind == 'together':
            other = self.who(f['with'], problems)
            if other == actor:
                problems.append(f"{actor} goes with {actor}")
            for name in (actor, other):
                if self.place[name] == f['place']:
                    problems.append(f"{name} is already at the {f['place']}")
                self.place[name] = f['place']
            actor = None  # two subjects: a following he/she has no antecedent
        elif kind in ('find', 'buy') and actor is not None:
            if 'place' in f:
                self.at(actor, f['place'], problems)
            if 'more' in f and not self.count[actor].get(f['obj0'], 0):
                problems.append(f"{actor} had no {f['obj0']}s, so not 'more'")
            self.change(actor, f['obj0'], f['n0'], problems)
        elif kind == 'lose' and actor is not None:
            self.change(actor, f['obj0'], -f['n0'], problems)
        elif kind == 'give':
            self.give(f, actor, problems)
        elif kind == 'had':
            self.state(actor, f['n0'], f['obj0'], problems)
        elif kind == 'feel' and actor is not None:
            total, start = sum(self.count[actor].values()), self.start[actor]
            if total == start or (total > start) != (f['feel'] == 'happy'):
                problems.append(f"{actor} has {total} things, {start} at the start: not {f['feel']}")
        elif kind == 'end':
            if f['end0'] == f.get('end1'):
                problems.append(f"{f['end0']} is named twice")
            for i in '01':
                if f'end{i}' in f:
                    self.state(self.who(f[f'end{i}'], problems), f[f'n{i}'], f[f'obj{i}'], problems)
            actor = f['end0'] if 'end1' not in f else None
        self.focus = actor
        return problems

# -----------------------------------------------------------------------------
# Checker


def split_sentences(text):
    """(complete sentences, trailing fragment): a sentence is everything up to and with a '.'."""
    parts = text.split('.')
    sentences = [part.strip() + '.' for part in parts[:-1]]
    return sentences, parts[-1].strip()


def check(prompt, continuation):
    """Score `continuation` against the grammar and against the facts of `prompt`.

    The prompt's complete sentences set the facts (its ill-formed ones are skipped and counted
    in prompt_errors). A sentence cut between prompt and continuation is judged whole, as part of
    the continuation. The continuation ends at the first '<|endoftext|>'. An unterminated final
    fragment (generation stopped mid-sentence) is not judged; it is counted in 'fragment'.
    A wrong fact is counted once: the world then follows what the sentence said.

    Returns counts (sentences, well_formed, consistent, fragment, prompt_errors), rates
    grammar = well_formed / sentences, consistency = consistent / well_formed,
    score = consistent / sentences (all 0.0 when there is nothing to judge), and errors:
    a list of (sentence, reason).
    """
    continuation = continuation.split('<|endoftext|>')[0]
    cut = prompt.rfind('.') + 1
    prompt_sentences, _ = split_sentences(prompt[:cut])
    sentences, fragment = split_sentences(prompt[cut:] + continuation)
    world, prompt_errors = _World(), 0
    for sentence in prompt_sentences:
        try:
            world.apply(parse(sentence))
        except ValueError:
            prompt_errors += 1
    well_formed = consistent = 0
    errors = []
    for sentence in sentences:
        try:
            fields = parse(sentence)
        except ValueError as e:
            errors.append((sentence, f"not well formed: {e}"))
            continue
        well_formed += 1
        problems = world.apply(fields)
        consistent += not problems
        errors += [(sentence, problem) for problem in problems]
    n = len(sentences)
    return dict(sentences=n, well_formed=well_formed, consistent=consistent,
                fragment=int(bool(fragment)), prompt_errors=prompt_errors,
                grammar=well_formed / n if n else 0.0,
                consistency=consistent / well_formed if well_formed else 0.0,
                score=consistent / n if n else 0.0, errors=errors)


def check_many(pairs):
    """Aggregate check() over (prompt, continuation) pairs: summed counts, rates over all
    sentences, the mean per-sample score, the fraction of samples with no ill-formed sentence
    ('all_parse') and the fraction scored 1.0 ('perfect')."""
    results = [check(prompt, continuation) for prompt, continuation in pairs]
    total = {key: sum(r[key] for r in results)
             for key in ('sentences', 'well_formed', 'consistent', 'fragment', 'prompt_errors')}
    n = max(len(results), 1)
    total.update(samples=len(results),
                 grammar=total['well_formed'] / max(total['sentences'], 1),
                 consistency=total['consistent'] / max(total['well_formed'], 1),
                 score=sum(r['score'] for r in results) / n,
                all_parse=sum(r['well_formed'] == r['sentences'] for r in results) / n,
                 perfect=sum(r['score'] == 1.0 for r in results) / n)
    return total
