package db

// LoadMigrations exposes loadMigrations to the tests.
var LoadMigrations = loadMigrations

// Apply exposes apply: a test migrates to a chosen version.
var Apply = apply
