-- The completion map the client binds to COMPLETE_MANY ({"<id>": [token, result]}),
-- built here for a batch claimed under token 7. Included by current.sql and move.sql.
CREATE FUNCTION completion_map(ids bigint[]) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_object_agg(x::text, jsonb_build_array(7, null)) FROM unnest(ids) x;
$$;
