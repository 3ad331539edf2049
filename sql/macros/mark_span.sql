-- name: mark_span
-- kind: macro
-- answers: A piece of text with one span wrapped in << >>, cut to a window of context characters either side with … where cut.
-- inputs: none
-- params: txt, char_start, char_end, context
-- param txt: the text
-- param char_start: 0-based character offset where the span starts
-- param char_end: 0-based character offset where the span ends (exclusive)
-- param context: characters to keep either side of the span (negative counts as 0); NULL keeps the whole text
-- notes: offsets count Unicode code points, as Python's str does (DuckDB's substring and
--   length on VARCHAR count code points too, not bytes), so with Python slicing this is
--   ('…' if lo > 0 else '') + txt[lo:char_start] + '<<' + txt[char_start:char_end] + '>>'
--   + txt[char_end:hi] + ('…' if hi < len(txt) else ''), where lo = max(0, char_start - context)
--   and hi = min(len(txt), char_end + context).
CREATE OR REPLACE MACRO mark_span(txt, char_start, char_end, context) AS
    CASE WHEN char_start - greatest(coalesce(context, length(txt)), 0) > 0
        THEN '…' ELSE '' END
    || substring(
        txt,
        greatest(char_start - greatest(coalesce(context, length(txt)), 0), 0) + 1,
        char_start - greatest(char_start - greatest(coalesce(context, length(txt)), 0), 0)
    )
    || '<<' || substring(txt, char_start + 1, char_end - char_start) || '>>'
    || substring(txt, char_end + 1, greatest(coalesce(context, length(txt)), 0))
    || CASE WHEN char_end + greatest(coalesce(context, length(txt)), 0) < length(txt)
        THEN '…' ELSE '' END;
