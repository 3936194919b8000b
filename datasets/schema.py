"""The event schema every reader produces and every later stage trusts.

One row is one thing a user did to one product at one moment:

| column       | type                      | required | meaning                                                    |
|--------------|---------------------------|----------|------------------------------------------------------------|
| user_id      | int64 or string           | yes      | who (opaque key; int64 when ids are canonical integers)    |
| session_id   | int64 or string           | no       | the SDK's session; else cut at an inactivity gap           |
| item_id      | int64 or string           | yes      | which product                                              |
| event_type   | string                    | yes      | view (= click), like, cart, purchase, or a mapped extra    |
| timestamp    | timestamp[us, UTC]        | yes      | when                                                       |
| nudge_id     | string                    | no       | the nudge shown with this event, if any                    |
| propensity   | float64 in (0, 1]         | no       | probability with which the logging policy chose that nudge |
| value        | float64                   | no       | price of the item                                          |
| (features)   | string                    | no       | free user/item feature columns, passed through unchanged   |

Bad rows never vanish: they go to a quarantine table with `QUARANTINE_SCHEMA`, one row per bad input row.
"""

from __future__ import annotations

import pyarrow as pa

# Canonical event types and their integer codes; extra types configured by the user get codes 4, 5, ...
EVENT_TYPES: tuple[str, ...] = ("view", "like", "cart", "purchase")
VIEW, LIKE, CART, PURCHASE = range(4)

# Default rewards per event type (the papers use click 0.2 and purchase 1.0).
DEFAULT_REWARDS: dict[str, float] = {"view": 0.2, "like": 0.4, "cart": 0.6, "purchase": 1.0}

# Names in the wild that mean one of our event types; applied by every reader unless a map overrides them.
EVENT_SYNONYMS: dict[str, str] = {
    "click": "view", "pv": "view", "page_view": "view", "impression_click": "view",
    "fav": "like", "favorite": "like", "favourite": "like", "wishlist": "like",
    "addtocart": "cart", "add_to_cart": "cart", "add-to-cart": "cart",
    "buy": "purchase", "transaction": "purchase", "order": "purchase",
}

# Fields a source can map; user, item, time and event (or a constant event type) are required.
FIELDS: tuple[str, ...] = ("user", "session", "item", "time", "event", "nudge", "propensity", "value")
REQUIRED_FIELDS: tuple[str, ...] = ("user", "item", "time")
COLUMN_OF_FIELD: dict[str, str] = {
    "user": "user_id", "session": "session_id", "item": "item_id", "time": "timestamp",
    "event": "event_type", "nudge": "nudge_id", "propensity": "propensity", "value": "value",
}

# Reserved item indices of every vocabulary, defined here alone: padding, the out-of-vocabulary item, and the
# first real item (item i of vocabulary.parquet has index i + FIRST_ITEM).
PAD, OOV, FIRST_ITEM = 0, 1, 2

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

# Longest string id accepted; longer ids are quarantined as id_out_of_range.
MAX_STRING_ID_BYTES = 256

# Every reason a row can be quarantined for (stable names: scripts count them in manifest.json).
REASONS: tuple[str, ...] = (
    "missing_value",         # a required field is empty or null
    "unparsable_value",      # id/time/number that does not parse (or a non-canonical integer id in int mode)
    "id_out_of_range",       # integer id negative or beyond int64, string id longer than MAX_STRING_ID_BYTES
    "unknown_event_type",    # event type neither canonical nor mapped
    "nan_time",              # time is NaN
    "negative_time",         # time before 1970-01-01
    "time_out_of_range",     # time after 2262-04-11T23:47:16.854775Z (validate.MAX_TIME_US), any format
    "propensity_out_of_range",  # propensity NaN or outside (0, 1]
    "duplicate_event",       # same user, item, event type and time as an earlier row
    "wrong_column_count",    # CSV row with more or fewer fields than the header
    "undecodable_bytes",     # bytes that are not valid UTF-8
    "malformed_row",         # JSONL line that is not a JSON object
)
REASON_CODE: dict[str, int] = {r: i + 1 for i, r in enumerate(REASONS)}  # 0 means "row is fine"

QUARANTINE_SCHEMA = pa.schema([
    ("source_file", pa.string()),  # path of the input file
    ("row", pa.int64()),           # 1-based line number in a text file (header is line 1), row index in Parquet
    ("field", pa.string()),        # the field that failed ("*" for the whole row)
    ("reason", pa.string()),       # one of REASONS
    ("value", pa.string()),        # the offending value (or raw line), truncated to 200 characters
])
