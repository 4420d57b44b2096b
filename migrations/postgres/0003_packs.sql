-- Trials trained together as one batched model (a pack): the pack a running or finished
-- trial last trained in, as `<first trial id>+<other members>`; NULL when it trained alone.
ALTER TABLE trials ADD COLUMN pack TEXT;
