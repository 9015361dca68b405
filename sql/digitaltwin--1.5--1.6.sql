/* digitaltwin--1.5--1.6.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.6'" to load this file. \quit

--------------------------------------------------------------------------
-- Version 1.6: durable timers, quiescent messages, an outbox to the data
-- sources (issue 13).
--------------------------------------------------------------------------

-- [section: timers]
-- [end section: timers]

-- [section: outbox]
-- [end section: outbox]
