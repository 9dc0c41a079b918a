-- The arrays the client binds to COMPLETE_MANY besides the ids (each id's token and
-- result, in the ids' order), built here for a batch claimed under token 7 whose results
-- are all JSON null. Included by current.sql and move.sql.
CREATE FUNCTION completion_tokens(ids bigint[]) RETURNS bigint[] LANGUAGE sql AS $$
    SELECT array_fill(7::bigint, ARRAY[cardinality(ids)]);
$$;
CREATE FUNCTION completion_results(ids bigint[]) RETURNS jsonb[] LANGUAGE sql AS $$
    SELECT array_fill('null'::jsonb, ARRAY[cardinality(ids)]);
$$;
