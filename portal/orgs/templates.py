"""Org templates: ready-made metadata a new org can start from.

`sales` holds the standard CRM entities of the Resco test plan: account,
contact, lead, competitor, leadcompetitor (the N:N intersect of lead and
competitor), appointment (an activity) and systemuser, with lookups between
them. Names follow Dataverse's logical names.
"""

from portal.errors import InvalidInput
from portal.orgs.metadata import Attribute, Entity, Option


def _a(name: str, kind: str, label: str, **kw: object) -> Attribute:
    labels = {"1033": label}
    german = kw.pop("de", None)
    if german:
        labels["1031"] = str(german)
    return Attribute(name, kind, label, labels, **kw)  # type: ignore[arg-type]


def _owner() -> Attribute:
    return _a("ownerid", "lookup", "Owner", targets=["systemuser"], de="Besitzer")


def sales() -> list[Entity]:
    """The entities of the `sales` template."""
    return [
        Entity("systemuser", "User", {"1033": "User", "1031": "Benutzer"},
               "systemuserid", "fullname", "systemusers", attributes=[
                   _a("fullname", "string", "Full Name", maxlength=200, de="Vollständiger Name"),
                   _a("firstname", "string", "First Name", maxlength=64),
                   _a("lastname", "string", "Last Name", maxlength=64),
                   _a("internalemailaddress", "string", "Primary Email", maxlength=100),
                   _a("domainname", "string", "User Name", maxlength=1024),
                   _a("isdisabled", "boolean", "Status"),
               ]),
        Entity("account", "Account", {"1033": "Account", "1031": "Firma"},
               "accountid", "name", "accounts", attributes=[
                   _a("name", "string", "Account Name", maxlength=160, required=True,
                      de="Firmenname"),
                   _a("accountnumber", "string", "Account Number", maxlength=20),
                   _a("telephone1", "string", "Main Phone", maxlength=50),
                   _a("emailaddress1", "string", "Email", maxlength=100),
                   _a("websiteurl", "string", "Website", maxlength=200),
                   _a("address1_city", "string", "City", maxlength=80),
                   _a("address1_country", "string", "Country/Region", maxlength=80),
                   _a("description", "memo", "Description", maxlength=2000),
                   _a("revenue", "money", "Annual Revenue", precision=2),
                   _a("numberofemployees", "integer", "Number of Employees"),
                   _a("industrycode", "picklist", "Industry", options=[
                       Option(1, "Accounting"), Option(2, "Agriculture"),
                       Option(3, "Broadcasting"), Option(4, "Brokers"),
                       Option(5, "Building Supply Retail"), Option(6, "Business Services"),
                       Option(7, "Consulting"), Option(8, "Consumer Services"),
                   ]),
                   _a("creditonhold", "boolean", "Credit Hold"),
                   _a("lastusedincampaign", "datetime", "Last Date Included in Campaign"),
                   _a("primarycontactid", "lookup", "Primary Contact", targets=["contact"]),
                   _a("parentaccountid", "lookup", "Parent Account", targets=["account"]),
                   _owner(),
               ]),
        Entity("contact", "Contact", {"1033": "Contact", "1031": "Kontakt"},
               "contactid", "fullname", "contacts", attributes=[
                   _a("fullname", "string", "Full Name", maxlength=160),
                   _a("firstname", "string", "First Name", maxlength=50),
                   _a("lastname", "string", "Last Name", maxlength=50, required=True),
                   _a("emailaddress1", "string", "Email", maxlength=100),
                   _a("telephone1", "string", "Business Phone", maxlength=50),
                   _a("jobtitle", "string", "Job Title", maxlength=100),
                   _a("birthdate", "datetime", "Birthday"),
                   _a("gendercode", "picklist", "Gender", options=[
                       Option(1, "Male"), Option(2, "Female")]),
                   _a("donotemail", "boolean", "Do not allow Emails"),
                   _a("parentcustomerid", "lookup", "Company Name", targets=["account"]),
                   _owner(),
               ]),
        Entity("lead", "Lead", {"1033": "Lead", "1031": "Lead"},
               "leadid", "fullname", "leads", attributes=[
                   _a("fullname", "string", "Name", maxlength=160),
                   _a("subject", "string", "Topic", maxlength=300),
                   _a("firstname", "string", "First Name", maxlength=50),
                   _a("lastname", "string", "Last Name", maxlength=50, required=True),
                   _a("companyname", "string", "Company Name", maxlength=100),
                   _a("emailaddress1", "string", "Email", maxlength=100),
                   _a("leadsourcecode", "picklist", "Lead Source", options=[
                       Option(1, "Advertisement"), Option(2, "Employee Referral"),
                       Option(3, "External Referral"), Option(4, "Partner"),
                       Option(8, "Web"), Option(10, "Other")]),
                   _a("estimatedvalue", "money", "Est. Value", precision=2),
                   _a("estimatedclosedate", "datetime", "Est. Close Date"),
                   _a("parentaccountid", "lookup", "Parent Account for lead",
                      targets=["account"]),
                   _a("parentcontactid", "lookup", "Parent Contact for lead",
                      targets=["contact"]),
                   _owner(),
               ]),
        Entity("competitor", "Competitor", {"1033": "Competitor", "1031": "Mitbewerber"},
               "competitorid", "name", "competitors", attributes=[
                   _a("name", "string", "Name", maxlength=100, required=True),
                   _a("websiteurl", "string", "Website", maxlength=200),
                   _a("strengths", "memo", "Strengths", maxlength=2000),
                   _a("weaknesses", "memo", "Weaknesses", maxlength=2000),
                   _a("reportedrevenue", "money", "Reported Revenue", precision=2),
               ]),
        Entity("leadcompetitor", "Lead Competitor", {"1033": "Lead Competitor"},
               "leadcompetitorid", None, "leadcompetitors", isintersect=True, attributes=[
                   _a("leadid", "lookup", "Lead", targets=["lead"], required=True),
                   _a("competitorid", "lookup", "Competitor", targets=["competitor"],
                      required=True),
               ]),
        Entity("appointment", "Appointment", {"1033": "Appointment", "1031": "Termin"},
               "activityid", "subject", "appointments", attributes=[
                   _a("subject", "string", "Subject", maxlength=200, required=True),
                   _a("description", "memo", "Description", maxlength=2000),
                   _a("location", "string", "Location", maxlength=200),
                   _a("scheduledstart", "datetime", "Start Time"),
                   _a("scheduledend", "datetime", "End Time"),
                   _a("scheduleddurationminutes", "integer", "Duration"),
                   _a("isalldayevent", "boolean", "All Day Event"),
                   _a("prioritycode", "picklist", "Priority", options=[
                       Option(0, "Low"), Option(1, "Normal"), Option(2, "High")]),
                   _a("regardingobjectid", "lookup", "Regarding",
                      targets=["account", "contact", "lead"]),
                   _owner(),
               ]),
    ]


TEMPLATES = {"sales": sales}


def template_entities(name: str) -> list[Entity]:
    """The entities of a named template; InvalidInput for an unknown name."""
    make = TEMPLATES.get(name)
    if make is None:
        raise InvalidInput(f"unknown template {name!r} (known: {', '.join(sorted(TEMPLATES))})",
                           field="template")
    return make()
