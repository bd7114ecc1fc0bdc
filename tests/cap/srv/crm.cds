// The CRM model a real SAP CAP server serves to our tests (tests/cap_server.py).
//
// Service CrmService at /odata/v4/crm/ (Basic auth, mocked users in package.json):
//   Accounts    cuid + managed: ID (UUID key), createdAt/modifiedAt (server-set),
//               name String(100) not null, revenue Decimal(15,2), employees Integer,
//               active Boolean, foundedOn Date, lastContactAt DateTime,
//               rating Rating (enum), contacts (the other side of Contacts.account)
//   Contacts    cuid + managed: ID, firstName String(50), lastName String(100) not null,
//               email String(255), account -> Accounts (a lookup; foreign key account_ID)
//   Products    managed, Integer key ID (client-chosen), name String(100) not null,
//               price Decimal(10,2), currency -> Currencies (foreign key currency_code,
//               'EUR' when a create leaves it out: a lookup the server sets itself)
//   Currencies  managed, String key code String(3) (client-chosen), name String(60),
//               symbol String(5)
//   Periods     managed, a composite key (year Integer, code String(10)), both
//               client-chosen, name String(60)
//   Budgets     cuid + managed: ID, name String(100) not null, amount Decimal(12,2),
//               period -> Periods (a lookup to a composite key; foreign keys
//               period_year, period_code)
// modifiedAt is every entity's ETag, so updates and deletes need If-Match (428 without).
namespace crm;

using { cuid, managed } from '@sap/cds/common';

type Rating : Integer enum {
  cold = 1;
  warm = 2;
  hot  = 3;
}

entity Accounts : cuid, managed {
  name          : String(100) not null;
  revenue       : Decimal(15, 2);
  employees     : Integer;
  active        : Boolean default true;
  foundedOn     : Date;
  lastContactAt : DateTime;
  rating        : Rating @assert.range; // CAP accepts any Integer without it
  contacts      : Association to many Contacts on contacts.account = $self;
}

entity Contacts : cuid, managed {
  firstName : String(50);
  lastName  : String(100) not null;
  email     : String(255);
  account   : Association to Accounts;
}

entity Products : managed {
  key ID   : Integer;
  name     : String(100) not null;
  price    : Decimal(10, 2);
  currency : Association to Currencies default 'EUR'; // set by CAP when a create leaves it out
}

entity Currencies : managed {
  key code : String(3);
  name     : String(60);
  symbol   : String(5);
}

entity Periods : managed {
  key year : Integer;
  key code : String(10);
  name     : String(60);
}

entity Budgets : cuid, managed {
  name   : String(100) not null;
  amount : Decimal(12, 2);
  period : Association to Periods;
}

annotate Accounts with { modifiedAt @odata.etag; }
annotate Contacts with { modifiedAt @odata.etag; }
annotate Products with { modifiedAt @odata.etag; }
annotate Currencies with { modifiedAt @odata.etag; }
annotate Periods with { modifiedAt @odata.etag; }
annotate Budgets with { modifiedAt @odata.etag; }

@requires: 'authenticated-user'
service CrmService @(path: '/odata/v4/crm') {
  entity Accounts   as projection on crm.Accounts;
  entity Contacts   as projection on crm.Contacts;
  entity Products   as projection on crm.Products;
  entity Currencies as projection on crm.Currencies;
  entity Periods    as projection on crm.Periods;
  entity Budgets    as projection on crm.Budgets;
}
