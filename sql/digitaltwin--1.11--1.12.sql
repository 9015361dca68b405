/* digitaltwin--1.11--1.12.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.12'" to load this file. \quit

-- Keep the workers out first (see the 1.10 script): every batch locks
-- digitaltwin.models before anything else.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

--------------------------------------------------------------------------
-- Performance, round 2 (issue 15).

-- The queue has no index any more.  Its primary key (id, part) was read
-- by the workers in id order; keeping it cost about a third of every
-- insert (the btree insertion), the largest cost of ingestion after the
-- heap itself.  The workers now read the queue's pages and keep the oldest
-- events they find, remembering which pages have nothing for them (see
-- src/fetch.c): the same events in the same order, exactly once.  Ids stay
-- unique without the key: they come from the identity, writers cannot
-- set them (their INSERT right names the other columns), and the
-- extension's own inserts with OVERRIDING SYSTEM VALUE reuse ids taken
-- from the same sequence (held and moved events).
ALTER TABLE digitaltwin.events DROP CONSTRAINT events_pkey;

COMMENT ON TABLE digitaltwin.events IS
'Durable event queue. INSERT (single or multi-row) or COPY (model, twin_id, payload); background workers consume each committed event exactly once, oldest id first. No index: the workers read its pages.';
