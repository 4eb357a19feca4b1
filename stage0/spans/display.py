"""Text from the ledger as a person is shown it (the CLI's inbox and request views, the CSV
export): characters that are invisible or change the reading direction are written as
visible escapes, so `invoice\\u202efdp.exe` never reads as `invoice` + `exe.pdf`.

The set (the console's app.js `INVISIBLE` is the same one, and a browser test compares them):
C0 controls and DEL, C1 controls, U+00AD soft hyphen, U+061C Arabic letter mark, U+180E,
U+200B-U+200F (zero-width and left-to-right/right-to-left marks), U+2028-U+202E (line and
paragraph separators, bidirectional embeddings and overrides), U+2060-U+2069 (word joiner,
invisible operators, bidirectional isolates), U+FEFF and U+FFF9-U+FFFB.
"""

from __future__ import annotations

import re
from typing import Any

INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
                       "\u2060-\u2069\ufeff\ufff9-\ufffb]")


def visible(value: Any) -> str:
    """`value` as text with every INVISIBLE character written as `\\uXXXX`."""
    return INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(value))
