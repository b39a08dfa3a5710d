"""The labelled PII set: ShareGPT-style chat rows with planted PII of every pattern type and PII-looking non-PII.

    python bench/pii_set.py            # rewrites bench/data/pii_labelled.jsonl (deterministic, seed 0)

Each row is {"id", "conversations": [{"from": "human"|"gpt", "value"}], "pii": [{"turn", "type", "value"}]}: every
occurrence of a planted value is listed (a value echoed by the assistant is listed in both turns). Conversations are
written the way users write to assistants (support requests, debugging sessions, forms, CVs, shopping, maths), with
decoys that naive patterns take for PII: version numbers, dates, prices, git hashes, UUIDs, order and tracking
numbers, ISBNs, timestamps, arithmetic, loopback addresses, an SSH remote, 16-digit numbers failing Luhn, IBANs
failing their checksum. Values are made up: card numbers pass Luhn and IBANs their mod-97 check, phone numbers are
valid by libphonenumber's metadata, no value belongs to anyone.

Labels: `email`, `phone`, `ip_address` (public and private addresses; loopback and unspecified ones are not
personal and are decoys), `credit_card`, `iban`, `credential` (API keys, tokens, private keys) and `person` (names:
only an NER model can find these; the pattern types are the goal of the benchmark).
"""
from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

import phonenumbers

OUT = Path(__file__).parent / "data" / "pii_labelled.jsonl"
PII_TYPES = ("email", "phone", "ip_address", "credit_card", "iban", "credential", "person")

FIRST = ["Priya", "John", "Maria", "Wei", "Fatima", "Lukas", "Sofia", "Ahmed", "Emily", "Carlos", "Yuki", "Olga",
         "David", "Aisha", "Tom", "Chloe", "Rahul", "Anna", "Mateo", "Grace"]
LAST = ["Raman", "Miller", "Garcia", "Zhang", "Khan", "Schneider", "Rossi", "Hassan", "Clarke", "Mendes", "Tanaka",
        "Ivanova", "Nguyen", "Okafor", "Brennan", "Dubois", "Mehta", "Kowalski", "Silva", "Thompson"]
DOMAINS = ["gmail.com", "outlook.com", "yahoo.co.uk", "proton.me", "acme-corp.com", "uni-heidelberg.de", "mail.ru",
           "icloud.com", "fastmail.fm", "company.io", "hospital.nhs.uk", "web.de"]
REGIONS = ["US", "US", "US", "GB", "GB", "DE", "FR", "IN", "AU", "CA", "ES", "NL"]
IBAN_FORMATS = {"DE": (18, "n"), "GB": (18, "GB"), "FR": (23, "n"), "ES": (20, "n"), "NL": (14, "NL"), "IT": (23, "IT"),
                "CH": (17, "n"), "BE": (12, "n"), "AT": (16, "n"), "PL": (24, "n")}


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, digit in enumerate(reversed(body)):
        d = int(digit)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def card(rng: random.Random) -> str:
    kind = rng.choice(["visa", "visa", "mc", "mc2", "amex", "discover"])
    prefix, length = {"visa": ("4", 16), "mc": (str(rng.randint(51, 55)), 16), "mc2": (str(rng.randint(2221, 2720)), 16),
                      "amex": (rng.choice(["34", "37"]), 15), "discover": ("6011", 16)}[kind]
    number = luhn_complete(prefix, length, rng)
    style = rng.choice(["space", "dash", "plain", "space"])
    if length == 15:
        groups = [number[:4], number[4:10], number[10:]]
    else:
        groups = [number[i:i + 4] for i in range(0, 16, 4)]
    return {"space": " ".join(groups), "dash": "-".join(groups), "plain": number}[style]


def iban(rng: random.Random, valid: bool = True) -> str:
    """An IBAN that passes mod-97 and its country's own BBAN rules (python-stdnum's check; `valid=False`: one whose
    IBAN check digits are wrong)."""
    from stdnum import iban as iban_rules

    while True:
        code = _iban(rng, valid)
        if iban_rules.is_valid(code) == valid:
            return " ".join(code[i:i + 4] for i in range(0, len(code), 4)) if rng.random() < 0.6 else code


def _iban(rng: random.Random, valid: bool) -> str:
    country = rng.choice(sorted(IBAN_FORMATS))
    length, kind = IBAN_FORMATS[country]
    if kind in ("GB", "NL", "IT"):
        bank = {"GB": "".join(rng.choice(string.ascii_uppercase) for _ in range(4)),
                "NL": rng.choice(["ABNA", "INGB", "RABO"]), "IT": rng.choice(string.ascii_uppercase)}[kind]
        bban = bank + "".join(rng.choice(string.digits) for _ in range(length - len(bank)))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(length))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    if not valid:
        check = (check + rng.randint(1, 50)) % 97 + 2
    return f"{country}{check:02d}{bban}"


def phone(rng: random.Random) -> str:
    region = rng.choice(REGIONS)
    example = phonenumbers.example_number_for_type(region, rng.choice([phonenumbers.PhoneNumberType.MOBILE,
                                                                       phonenumbers.PhoneNumberType.FIXED_LINE]))
    national = str(example.national_number)
    for _ in range(200):  # change the last digits until the number is still valid (and not the example itself)
        digits = national[:-4] + "".join(rng.choice(string.digits) for _ in range(4))
        number = phonenumbers.parse(digits, region)
        if phonenumbers.is_valid_number(number) and digits != national:
            break
    fmt = rng.choice([phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                      phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL])
    text = phonenumbers.format_number(number, fmt)
    if region == "US" and rng.random() < 0.3:
        text = f"{digits[:3]}.{digits[3:6]}.{digits[6:]}"
    return text


def email(rng: random.Random, first: str, last: str) -> str:
    user = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}{rng.randint(1, 99)}", f"{last}.{first}+news",
                       f"{first}_{last}"])
    return f"{user.lower()}@{rng.choice(DOMAINS)}"


def ip(rng: random.Random) -> str:
    kind = rng.choice(["public", "public", "private", "v6", "public"])
    if kind == "public":
        return f"{rng.choice([23, 34, 52, 81, 91, 104, 141, 185, 203, 212])}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind == "private":
        return rng.choice([f"192.168.{rng.randint(0, 9)}.{rng.randint(2, 254)}", f"10.{rng.randint(0, 40)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"])
    groups = [f"{rng.randint(0, 65535):x}" for _ in range(4)]
    return rng.choice([f"2001:db8:{groups[0]}:{groups[1]}::{groups[2]}", f"2a02:{groups[0]}:{groups[1]}:{groups[2]}:{groups[3]}:1ff:fe23:4567",
                       f"fe80::{groups[0]}:{groups[1]}:{groups[2]}"])


def token(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    kind = rng.choice(["openai", "hf", "github", "aws", "slack", "google", "stripe", "jwt", "pem", "gitlab", "anthropic"])
    if kind == "openai":
        return "sk-proj-" + token(rng, alnum + "_-", 48)
    if kind == "anthropic":
        return "sk-ant-api03-" + token(rng, alnum + "_-", 40)
    if kind == "hf":
        return "hf_" + token(rng, alnum, 34)
    if kind == "github":
        return rng.choice(["ghp_", "gho_", "github_pat_"]) + token(rng, alnum, 36)
    if kind == "aws":
        return "AKIA" + token(rng, string.ascii_uppercase + string.digits, 16)
    if kind == "slack":
        return "xoxb-" + token(rng, string.digits, 12) + "-" + token(rng, string.digits, 12) + "-" + token(rng, alnum, 24)
    if kind == "google":
        return "AIza" + token(rng, alnum + "_-", 35)
    if kind == "stripe":
        return rng.choice(["sk_live_", "rk_live_"]) + token(rng, alnum, 24)
    if kind == "gitlab":
        return "glpat-" + token(rng, alnum + "_-", 20)
    if kind == "jwt":
        return "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + "eyJ" + token(rng, alnum, 40) + "." + token(rng, alnum + "_-", 43)
    body = "\n".join(token(rng, alnum + "+/", 64) for _ in range(4))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"


def decoys(rng: random.Random) -> dict:
    """Values that look like PII and are not (no label)."""
    hexd = "0123456789abcdef"
    bad_card = luhn_complete("4", 16, rng)
    bad_card = bad_card[:-1] + str((int(bad_card[-1]) + 3) % 10)
    return {
        "version": rng.choice(["v2.14.3", "3.12.1", "1.26.4", "124.0.6367.91", "10.0.19045.3803", "0.9.0-rc1", "5.15.0-91-generic"]),
        "version4": rng.choice(["1.0.2.3", "4.2.1.0", "2.0.0.1"]),
        "date": rng.choice(["2024-03-15", "15/03/2024", "March 3, 2024", "2023-11-30T14:22:05Z", "12.05.2023", "03/04/2025"]),
        "price": rng.choice(["$1,299.99", "€49.95", "£12.50", "$ 2 499", "USD 15,000.00", "¥128,000"]),
        "git": token(rng, hexd, 40), "short": token(rng, hexd, 7),
        "uuid": "-".join(token(rng, hexd, n) for n in (8, 4, 4, 4, 12)),
        "order": rng.choice([f"#{rng.randint(100, 999)}-{rng.randint(1000000, 9999999)}-{rng.randint(1000000, 9999999)}",
                             f"ORD-2024-{rng.randint(100000, 999999)}", f"{rng.randint(10**9, 10**10 - 1)}"]),
        "tracking": rng.choice([f"1Z{token(rng, string.ascii_uppercase + string.digits, 16)}", f"{rng.randint(10**11, 10**12 - 1)}",
                                f"9400 1000 0000 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)} {rng.randint(10, 99)}"]),
        "isbn": rng.choice(["978-0-306-40615-7", "978-1-4028-9462-6", "0-306-40615-2"]),
        "timestamp": str(rng.randint(1_600_000_000, 1_750_000_000)),
        "math": rng.choice(["2147483647", "3.141592653589793", "12345 * 6789 = 83810205", "1,000,000 / 7 = 142857.142857",
                            "6.022e23", "2^64 = 18446744073709551616", "4 8 15 16 23 42"]),
        "loopback": rng.choice(["127.0.0.1:8000", "localhost:5432", "0.0.0.0:8080", "[::1]:3000"]),
        "remote": "git@github.com:acme/payments-api.git",
        "bad_card": " ".join(bad_card[i:i + 4] for i in range(0, 16, 4)),
        "bad_iban": iban(rng, valid=False),
        "zip": rng.choice(["94103", "SW1A 1AA", "10115", "75008"]),
        "sha": token(rng, hexd, 64),
        "coords": rng.choice(["37.7749, -122.4194", "51.5072° N, 0.1276° W", "48.8566, 2.3522"]),
        "cidr": rng.choice(["0.0.0.0/0", "255.255.255.0"]),
        "size": rng.choice(["1920x1080", "3840 x 2160", "16 GB", "512x512"]),
    }


# Conversations as users write them. {slot} is filled; PII slots are labelled, decoy slots (see decoys()) are not.
TEMPLATES = [
    ["Hi, I can't log into my account. My email is {email} and I last logged in on {date}. Can you reset it?",
     "I'm sorry to hear that! I can't reset accounts myself, but you can use the 'Forgot password' link; the reset "
     "mail will go to {email}. If it doesn't arrive, check the spam folder."],
    ["Write a short cover letter for a junior data analyst role. My name is {person}, phone {phone}, email {email}.",
     "Dear Hiring Manager,\n\nI am writing to apply for the Junior Data Analyst position... You can reach me at "
     "{phone} or {email}.\n\nSincerely,\n{person}"],
    ["My nginx server at {ip} returns 502 after upgrading to nginx {version}. The upstream runs on {loopback}. Config:\n"
     "```\nupstream app {{ server {loopback}; }}\n```",
     "A 502 means nginx could not reach the upstream. Check that the app listens on {loopback} and that SELinux allows "
     "the connection: `setsebool -P httpd_can_network_connect 1`."],
    ["why does this fail?\n```python\nimport openai\nclient = openai.OpenAI(api_key=\"{secret}\")\n"
     "client.models.list()\n```\nI'm on openai {version}",
     "Your code looks right; the error is likely the network. Also: never paste API keys into chats or commits. "
     "Revoke that key now and load it from an environment variable instead."],
    ["I was charged twice for order {order} on {date}, {price} each time. The card was {card}. Please refund one.",
     "I'm sorry about the double charge. I can't access payment systems, but when you contact the store, give them "
     "the order number {order} and the two charge dates."],
    ["Please fill this SEPA transfer form for me: beneficiary {person}, IBAN {iban}, amount {price}, reference invoice {order}.",
     "Here is the filled form:\n\n- Beneficiary: {person}\n- IBAN: {iban}\n- Amount: {price}\n- Reference: invoice {order}"],
    ["Can you explain what commit {git} changed? The message says 'fix race in scheduler' and the tag is {version}.",
     "I can't see your repository, but a commit with that message usually adds a lock around shared state. Run "
     "`git show {short}` to see the diff."],
    ["Generate a UUID v4 for my test fixture. Here's an example of the format: {uuid}",
     "Sure: `{uuid}` has the right format; in Python use `uuid.uuid4()` to make new ones."],
    ["What is {math}? Show the steps.", "Let's compute it step by step... The result is as shown: {math}."],
    ["My ISP gave me {ip} as a static IP, but my router shows {ip2}. Which one do I use for port forwarding?",
     "Use the router's WAN address for forwarding if it matches {ip}; if the router shows {ip2}, you may be behind "
     "carrier-grade NAT."],
    ["Hey, text me at {phone} when the package arrives. Tracking number is {tracking}.",
     "I can't send texts, but you can sign up for carrier notifications with tracking number {tracking}."],
    ["Translate to German: 'Please call me back at {phone}, my name is {person}.'",
     "'Bitte rufen Sie mich unter {phone} zurück, mein Name ist {person}.'"],
    ["I need to cite the book with ISBN {isbn} in APA style, published {date}.",
     "Here is an APA citation template; fill in the author and title from the ISBN {isbn} record."],
    ["Our AWS key {secret} leaked in a public repo, commit {git}. What do I do?",
     "Deactivate the key in IAM immediately, rotate it, and purge it from the history with git filter-repo."],
    ["Set up SSH: my server is {ip}, the user is deploy, and the repo is {remote}.",
     "Add your public key to ~/.ssh/authorized_keys on {ip}, then clone {remote} as the deploy user."],
    ["Is the card number {bad_card} valid? It was on a receipt.",
     "That number fails the Luhn checksum, so it is not a valid card number."],
    ["Check my IBAN please: {bad_iban}", "That IBAN's check digits do not match; please copy it again from your bank statement."],
    ["Contact list for the offsite:\n- {person}: {email}, {phone}\n- {person2}: {email2}, {phone2}",
     "Got it. I'll draft an invitation to both: {email} and {email2}."],
    ["What's the unix time {timestamp} in UTC?", "The timestamp {timestamp} corresponds to a date in UTC; use "
                                                "`datetime.fromtimestamp({timestamp}, tz=timezone.utc)` to convert it."],
    ["my screen is {size} and the app renders blurry on version {version}", "Set the scaling to 100% and update past {version}."],
    ["Please pay {price} to {iban} by {date}. Questions: {email}.",
     "Noted: {price} to {iban}, due {date}. I'll remind you the day before."],
    ["Hi it's {person}, my card {card} was declined at checkout, error code 05. Billing zip {zip}.",
     "Error 05 means 'do not honour': the bank declined it. Call the number on the back of the card."],
    ["Docker compose:\n```yaml\nservices:\n  db:\n    image: postgres:{version}\n    ports: [\"{loopback}\"]\n"
     "    environment:\n      SLACK_TOKEN: {secret}\n```\nwhy won't it start?",
     "The port mapping should be \"5432:5432\"; and move SLACK_TOKEN into an .env file that is not committed."],
    ["The firmware update {version4} bricked my router. The admin page at {ip} is unreachable.",
     "Try a 30-30-30 reset, then reach the recovery page at the default gateway."],
    ["We're at {coords}. What's the nearest hospital?", "I can't look up live maps, but search for hospitals near {coords}."],
    ["Summarise: 'Meeting with {person} on {date}. Budget {price}. Follow up at {email}.'",
     "Summary: a meeting on {date} about a budget of {price}; follow-up by email."],
    ["Firewall rule: allow {ip} and {ip2}, deny {cidr}. Is this order right?",
     "Rules match top-down, so the allow rules for {ip} and {ip2} must come before the deny of {cidr}."],
    ["Here is my GitHub token {secret}, can you list my private repos?",
     "I can't access GitHub, and please revoke that token: anyone who saw this message can use it."],
    ["Compute the sha256 of 'hello' and compare with {sha}", "sha256('hello') = 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824, which differs from {sha}."],
    ["Reply to this customer: 'I've been waiting since {date} for a refund of {price}. Call me on {phone}. - {person}'",
     "Dear {person}, thank you for your patience. We have escalated your refund of {price} and will call you on {phone} within two business days."],
    ["Debug: `curl -H 'Authorization: Bearer {secret}' https://api.example.com/v1/items` returns 401",
     "A 401 means the token is invalid or expired. Generate a new token and keep it out of shell history."],
    ["My IP is {ip}, am I blocked? I get error 403 since {date}.",
     "A 403 can come from a geo-block or rate limit. Wait an hour and try again from the same address."],
    ["Update my shipping info: {person}, {phone}, email {email}, order {order}.",
     "Updated the draft: {person}, {phone}, {email} for order {order}."],
    ["Split the bill: {price} among 4 people, then tip 15%.", "Each pays a quarter of {price}, plus 15% tip on top."],
    ["Transfer the deposit to my account {iban}; the landlord's account is {iban2}.",
     "Please confirm: from {iban2} to {iban}? I can draft the message to the landlord."],
    ["Log excerpt:\n```\n{date} ERROR auth failed for user=deploy from {ip} port 51234 ssh2\n{date} ERROR auth failed for user=root from {ip2} port 40022 ssh2\n```\nAm I under attack?",
     "Repeated failed logins from {ip} and {ip2} look like brute force. Install fail2ban and disable root login."],
    ["Use this key for the demo: {secret}", "Thanks, but I won't store keys. Put it in your app's secret manager."],
    ["Find the bug: `for i in range(10): print(i / (i - 5))` on Python {version}",
     "Division by zero when i == 5. Guard it with `if i != 5`."],
    ["I'm {person}. My email is {email} and my backup is {email2}. Which should receive the invoices?",
     "Use the primary one, {email}, and set {email2} as the secondary contact."],
    ["Call {phone} or {phone2} to reach the front desk. Room {order}.", "Noted the two numbers for the front desk."],
    ["Card ending {short}. Actually full number: {card}, exp 08/27, CVV 123.",
     "Please don't share full card numbers with me; I can't process payments."],
    ["A merchant I don't recognise charged {price} to my card {card} on {date}. Dispute letter please.",
     "Here is a dispute letter for the charge of {price} on {date} to the card {card}: ..."],
    ["Order summary: card {card}, shipping to {person}, total {price}, order {order}. Is it all correct?",
     "Yes: the card {card} will be charged {price} for order {order}."],
]


# Written after our stage's rules were set, and never tuned against: `python bench/pii.py --held-out` scores them alone.
HELD_OUT = [
    ["I'm moving. New contact: {phone}, or email {email}. My old landline {phone2} is cancelled from {date}.",
     "Thanks, I've noted {phone} and {email}; the old number {phone2} is removed."],
    ["Our VPN gateway {ip} drops packets since build {version}; MTU 1400, client at {ip2}. Ticket {order}.",
     "Lower the MTU to 1380 on {ip2} and capture on {ip} with tcpdump to see the fragments."],
    ["Reimburse {price} to {person}, IBAN {iban}, for the trip on {date} (receipt {tracking}).",
     "Reimbursement of {price} to {iban} is queued for the next payment run."],
    ["export ANTHROPIC_API_KEY={secret}\npython run.py --seed 42 --lr 3e-4 --steps 10000",
     "That works, but add the key to your shell profile instead of typing it, and rotate it since it's in this chat."],
    ["Card {card} keeps failing on your site with 'CVV mismatch' (order {order}, {price}).",
     "Please check the CVV on the back of the card and that the billing address matches."],
    ["Send the contract to {email} and cc {email2}. Sign-off by {person} on {date}.",
     "Sent to {email} with {email2} in copy."],
    ["The benchmark ran 3.2.1 → 3.4.0 with seeds 11 22 33 44; throughput 1,234,567 req/s, p99 12.5 ms, id {uuid}.",
     "A jump from 3.2.1 to 3.4.0 with that p99 looks like the new allocator."],
    ["wifi at the cafe gave me {ip}, and my laptop's MAC is 3c:22:fb:8a:11:0e. Is that traceable to me?",
     "The address {ip} belongs to the cafe's network, but the MAC can identify your laptop on it."],
]


def fill(template: list[str], rng: random.Random) -> tuple[list[str], list[dict]]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    first2, last2 = rng.choice(FIRST), rng.choice(LAST)
    pii = {"email": email(rng, first, last), "email2": email(rng, first2, last2), "phone": phone(rng), "phone2": phone(rng),
           "ip": ip(rng), "ip2": ip(rng), "card": card(rng), "iban": iban(rng), "iban2": iban(rng), "secret": secret(rng),
           "person": f"{first} {last}", "person2": f"{first2} {last2}"}
    kinds = {"email": "email", "email2": "email", "phone": "phone", "phone2": "phone", "ip": "ip_address",
             "ip2": "ip_address", "card": "credit_card", "iban": "iban", "iban2": "iban", "secret": "credential",
             "person": "person", "person2": "person"}
    values = decoys(rng) | pii
    turns = [turn.format(**values) for turn in template]
    used = {name for turn in template for name in re.findall(r"(?<!\{)\{(\w+)\}", turn)}
    labels = []
    for index, text in enumerate(turns):
        for name in sorted(used & set(pii)):
            for _ in re.finditer(re.escape(pii[name]), text):
                labels.append({"turn": index, "type": kinds[name], "value": pii[name]})
    return turns, labels


def build(rows: int = 400, seed: int = 0, templates: list | None = None) -> list[dict]:
    rng, templates = random.Random(seed), templates or TEMPLATES
    out = []
    for i in range(rows):
        turns, labels = fill(templates[i % len(templates)], rng)
        out.append({"id": f"pii-{i:04d}", "conversations": [{"from": "human" if j % 2 == 0 else "gpt", "value": t}
                                                            for j, t in enumerate(turns)], "pii": labels})
    return out


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows = build()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts = {t: sum(1 for r in rows for p in r["pii"] if p["type"] == t) for t in PII_TYPES}
    print(f"wrote {len(rows)} rows to {OUT}: planted {counts}")
